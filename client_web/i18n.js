// @ts-check
// Interface text of every page (the lesson pages and the resource library's): Simplified Chinese by default,
// English with ?lang=en. A teacher who reads no English must be able to run a lesson, so every visible string
// comes from here.

/** @type {{zh: Record<string, string>, en: Record<string, string>}} */
const TEXT = {
  zh: {
    "app.name": "课堂",
    "landing.title": "课堂 · 直播授课",
    "landing.intro": "主讲教师在浏览器中授课，远端听讲教室实时收看。请使用 “ketang lesson create” 生成的链接打开教师页或教室页。",
    "landing.teacher": "教师页（主讲）",
    "landing.classroom": "教室页（听讲）",
    "landing.howto": "生成链接：",
    "token.missing": "链接中缺少授权信息。请使用 “ketang lesson create” 生成的完整链接。",
    "teacher.title": "主讲教师",
    "teacher.devices": "选择设备",
    "teacher.camera": "摄像头",
    "teacher.microphone": "麦克风",
    "teacher.record": "录制本节课（存入资源库）",
    "teacher.preview": "本地预览",
    "teacher.start": "开始上课",
    "teacher.starting": "正在开始…",
    "teacher.live": "正在上课",
    "teacher.ready": "未开始：请检查摄像头和麦克风，然后点击“开始上课”",
    "teacher.share": "共享屏幕（课件）",
    "teacher.stopShare": "停止共享",
    "teacher.mute": "静音（我的麦克风）",
    "teacher.unmute": "取消静音（我的麦克风）",
    "teacher.cameraOff": "关闭我的摄像头",
    "teacher.cameraOn": "打开我的摄像头",
    "teacher.end": "结束课程",
    "teacher.endConfirm": "再次点击确认结束",
    "teacher.link": "听讲教室链接（每个教室一个，复制后发给该教室）",
    "teacher.copy": "复制",
    "teacher.copied": "已复制",
    "teacher.noLink": "没有教室链接：请用 “ketang lesson create” 生成教师链接",
    "teacher.classrooms": "听讲教室",
    "teacher.noClassrooms": "还没有教室加入",
    "teacher.col.name": "教室",
    "teacher.col.loss": "丢包",
    "teacher.col.rtt": "往返时延",
    "teacher.col.bitrate": "接收码率",
    "teacher.col.state": "接收质量",
    "teacher.col.video": "画面",
    "video.video": "正常",
    "video.audio": "仅声音",
    "video.trial": "恢复中",
    "video.courseware": "仅课件",
    "video.chosen": "仅声音（教室选择）",
    "layer.0": "高清",
    "layer.1": "标清",
    "layer.2": "流畅",
    "teacher.rttUnknown": "服务器未提供",
    "teacher.screenOn": "正在共享课件",
    "teacher.screenOnSound": "正在共享课件（含声音，各教室都能听到）",
    "teacher.screenOnSilent": "正在共享课件（无声音：要播放视频或听力的声音，请共享浏览器标签页并勾选“分享标签页音频”）",
    "teacher.reconnecting": "网络中断，正在重新连接…（各教室稍后自动恢复）",
    "teacher.replaced": "本课程已在另一个窗口打开，本窗口已停止。",
    "teacher.shareError": "无法共享屏幕：{error}",
    "classroom.title": "听讲教室",
    "classroom.enter": "进入课堂",
    "classroom.enterHint": "点击进入后将播放老师的声音和画面",
    "classroom.waiting": "等待老师开始上课…",
    "classroom.live": "正在上课",
    "classroom.connecting": "正在连接…",
    "classroom.reconnecting": "网络中断，正在重新连接…",
    "classroom.reconnected": "已重新连接",
    "classroom.fullscreen": "全屏",
    "classroom.audioOnly": "只听声音",
    "classroom.videoBack": "恢复视频",
    "classroom.lowVideo": "流畅画面",
    "classroom.autoVideo": "自动画质",
    "classroom.lowVideoOn": "已选择流畅画面：只接收最小的视频层，网络更稳",
    "classroom.audioOnlyOn": "已切换为只听声音：服务器不再发送视频，节省网络",
    "classroom.slidesOnly": "只看课件",
    "classroom.camerasBack": "恢复老师画面",
    "classroom.slidesOnlyOn": "已选择只看课件+声音：不再接收老师的摄像头画面，节省网络",
    "classroom.pipSwap": "⇄ 交换",
    "classroom.pipHide": "隐藏小窗",
    "classroom.pipShow": "显示小窗",
    "classroom.noVideo.audioOnly": "只听声音：画面已关闭，老师的声音照常播放",
    "classroom.noVideo.noSlides": "只看课件：老师现在没有共享课件，声音照常播放",
    "classroom.noVideo.noCamera": "老师没有打开摄像头，声音照常播放",
    "classroom.noVideo.paused": "网络较弱，画面暂停，声音照常播放；网络好转后画面自动恢复",
    "classroom.exitFullscreen": "退出全屏",
    "classroom.courseware": "课件",
    "classroom.teacher": "老师",
    "quality.good": "信号良好",
    "quality.fair": "信号一般",
    "quality.poor": "信号较差",
    "quality.none": "暂无画面",
    "quality.detail": "丢包 {loss} · 帧率 {fps} · 抖动 {jitter} · 时延 {rtt}",
    "teacher.stageCaption": "台上：{name}",
    "teacher.wall": "教室画面",
    "teacher.noWall": "教室加入后，它们的画面显示在这里",
    "teacher.page": "第 {page} / {pages} 页",
    "teacher.prevPage": "上一页",
    "teacher.nextPage": "下一页",
    "teacher.pageN": "第 {page} 页",
    "tile.stageOn": "上台",
    "tile.stageOff": "下台",
    "tile.mute": "静音",
    "tile.unmute": "取消静音",
    "tile.remove": "移出",
    "tile.removeConfirm": "确认移出？",
    "tile.hand": "举手",
    "tile.muted": "已静音",
    "tile.onStage": "台上",
    "tile.stageTitle": "上台：所有教室都能看到、听到这个教室",
    "tile.muteTitle": "静音：这个教室的声音谁也听不到，只有老师能取消",
    "tile.removeTitle": "移出课堂：这个教室的链接不能再进入本节课（再点一次确认）",
    "teacher.hands": "举手",
    "teacher.noHands": "暂无举手",
    "teacher.handAt": "{time} 举手",
    "teacher.manage": "课堂管理",
    "teacher.muteAll": "全部教室静音",
    "teacher.unmuteAll": "全部教室取消静音",
    "teacher.lock": "锁定课堂",
    "teacher.unlock": "解除锁定",
    "teacher.locked": "课堂已锁定：新教室不能加入（断线的教室仍可回来）",
    "teacher.chatOff": "关闭教室发言",
    "teacher.chatOn": "开启教室发言",
    "teacher.chatIsOff": "教室发言已关闭：只有老师能发消息",
    "teacher.attendance": "考勤",
    "teacher.downloadCsv": "下载考勤表（CSV）",
    "teacher.noAttendance": "还没有考勤记录",
    "att.name": "教室",
    "att.state": "状态",
    "att.present": "在线(分)",
    "att.sessions": "进入",
    "att.hands": "举手",
    "att.stage": "上台(分)",
    "att.loss": "丢包",
    "att.rtt": "时延",
    "att.kbps": "kbit/s",
    "att.video": "有画面",
    "att.online": "在线",
    "att.left": "已离开",
    "chat.title": "讨论区",
    "chat.placeholder": "输入消息，按回车发送",
    "chat.send": "发送",
    "chat.delete": "删除",
    "chat.empty": "还没有消息",
    "chat.off": "老师已关闭教室发言",
    "chat.teacher": "老师",
    "classroom.micOn": "打开麦克风",
    "classroom.micOff": "关闭麦克风",
    "classroom.micMuted": "已被老师静音",
    "classroom.noMic": "没有麦克风",
    "classroom.hand": "举手",
    "classroom.handDown": "放下",
    "classroom.handUp": "已举手",
    "classroom.handPosition": "已举手，排第 {position} 位",
    "classroom.onStage": "你们正在台上：所有教室都能看到、听到你们。请打开麦克风发言。",
    "classroom.stageGuest": "台上：{name}",
    "classroom.self": "本教室画面",
    "classroom.seen": "本教室画面（老师正在看）",
    "classroom.unseen": "本教室画面（老师暂未在看：暂停发送，节省网络）",
    "classroom.mutedByTeacher": "老师已将本教室静音",
    "classroom.publishError": "老师暂时看不到本教室的画面：{error}",
    "error.stage_full": "台上已满，请先让一个教室下台",
    "error.not_found": "这个教室已不在课堂中",
    "error.chat_off": "老师已关闭教室发言",
    "error.forbidden": "没有权限",
    "error.rate_limited": "操作太频繁，请稍后再试",
    "error.lesson_locked": "课堂已锁定",
    "error.removed": "已被移出课堂",
    "error.unavailable": "服务器暂时无法读取课堂状态，正在重试…",
    "error.draining": "服务器正在重启，稍后自动重新连接…",
    "lesson.ended": "课程已结束",
    "lesson.endedNext": "课程已结束，摄像头和麦克风已关闭。可以关闭本页；本课录像审核后可在资源库观看。",
    "teacher.endedNext": "课程已结束，摄像头和麦克风已关闭。要再上课，请点击“开始上课”。",
    "teacher.endConfirmText": "结束后所有教室停止收看，不能撤销。",
    "teacher.endYes": "确认结束",
    "confirm.cancel": "取消",
    "tile.removeConfirmText": "移出“{name}”：它的链接不能再进入本节课。",
    "classroom.onStageMuted": "你们正在台上，但老师已将本教室静音：暂时不能发言，等老师取消静音。",
    "classroom.micClosed": "麦克风已关闭",
    "live.camera": "摄像头开启中",
    "live.mic": "麦克风开启中（老师能听到）",
    "live.micOff": "麦克风已关闭",
    "resume": "在此处继续",
    "retryNow": "立即重试",
    "error.link": "链接无效或已过期，请联系主讲老师重新发送。",
    "error.link.teacher": "链接无效或已过期：请用 “ketang lesson create” 重新生成课程链接（由服务器管理员运行）。",
    "error.generic.teacher": "出错了（代码：{code}）。请刷新页面重试；如果仍然不行，请联系服务器管理员。",
    "error.locked": "课堂已锁定，新教室暂时不能进入。请联系主讲老师解除锁定后再点击“进入课堂”。",
    "error.removedForGood": "本教室已被老师移出课堂，不能再次进入。如有疑问，请联系主讲老师。",
    "error.replaced": "此链接已在另一个窗口或设备上打开，本窗口已停止（摄像头和麦克风已关闭）。要在这里继续，请点击“在此处继续”。",
    "error.lesson_ended": "课程已结束。可以关闭本页；本课录像审核后可在资源库观看。",
    "error.unreachable": "无法连接服务器：请检查网络。{seconds} 秒后自动重试……",
    "error.unreachableNow": "无法连接服务器：请检查网络，正在重试……",
    "error.cameraDenied": "摄像头或麦克风被浏览器拒绝：请点击地址栏左侧的锁形（或摄像头）图标，把“摄像头”和“麦克风”设为“允许”，然后刷新本页。在微信里打开的，请点右上角“…”选择“在浏览器中打开”。",
    "error.cameraBusy": "摄像头或麦克风正被其他程序使用（另一个浏览器窗口、视频会议软件等）：请关闭它们，然后刷新本页。",
    "error.noCamera": "没有找到摄像头或麦克风：请接好设备，然后刷新本页。",
    "error.noMicrophone": "没有找到麦克风：老师和其他教室听不到本教室。请接好麦克风后刷新本页。",
    "error.insecure": "摄像头和麦克风只能在 HTTPS 页面使用（地址以 https:// 开头，或在本机用 localhost 打开）。"
      + "请改用 https:// 开头的链接打开本页；如果没有，请联系管理员为服务器配置 HTTPS。",
    "error.generic": "出错了（代码：{code}）。请刷新页面重试；如果仍然不行，请联系主讲老师。",
    "classroom.stillWatching": "{error}本教室仍可收看。",
    // the resource library's pages (client_web/library/)
    library: "资源库", search: "搜索", searchPlaceholder: "课题、教师、学校、章节……", all: "全部",
    stage: "学段", subject: "学科", grade: "年级", edition: "教材版本", volume: "册", unit: "单元",
    chapter: "章节", teacher: "教师", school: "学校", title: "课题", description: "简介", language: "语言",
    date: "日期", duration: "时长", size: "大小", license: "许可", state: "状态", results: "共 {n} 节课",
    noResults: "没有找到课例", prev: "上一页", next: "下一页", page: "第 {p} / {n} 页",
    "state.recording": "录制中", "state.processing": "处理中", "state.awaiting_review": "待审核",
    "state.published": "已发布", "state.rejected": "未通过",
    download: "下载", downloadWebm: "下载 WebM 原始录像", downloadMp4: "下载 MP4", makeMp4: "生成 MP4",
    exporting: "正在生成 MP4：{p}", exportFailed: "生成 MP4 失败：请稍后重试", edit: "编辑信息", save: "保存", saved: "已保存",
    review: "审核", publish: "通过并发布", reject: "退回修改", note: "审核意见", resubmit: "重新提交审核",
    reviewNote: "审核意见：{note}（{who}）", back: "返回资源库", notFound: "找不到这节课，或您无权查看。",
    signIn: "未登录：只显示已发布的课例。", minutes: "{m} 分钟",
    incomplete: "不完整",
    "incomplete.disk": "录像不完整：录制时服务器磁盘已满，录像在那一刻提前结束，之后的内容没有录下；拖动进度条可能较慢。",
    "incomplete.other": "录像不完整：录制时服务器写入失败，录像在那一刻提前结束，之后的内容没有录下；拖动进度条可能较慢。",
  },
  en: {
    "app.name": "Ketang",
    "landing.title": "Ketang · live lessons",
    "landing.intro": "A master teacher teaches from the browser; remote classrooms watch live. Open the teacher or classroom page with a link made by “ketang lesson create”.",
    "landing.teacher": "Teacher page",
    "landing.classroom": "Classroom page",
    "landing.howto": "Make the links:",
    "token.missing": "The link has no access token. Use the full link printed by “ketang lesson create”.",
    "teacher.title": "Teacher",
    "teacher.devices": "Devices",
    "teacher.camera": "Camera",
    "teacher.microphone": "Microphone",
    "teacher.record": "Record this lesson (into the library)",
    "teacher.preview": "Preview",
    "teacher.start": "Start the lesson",
    "teacher.starting": "Starting…",
    "teacher.live": "Live",
    "teacher.ready": "Not started: check camera and microphone, then press “Start the lesson”",
    "teacher.share": "Share screen (courseware)",
    "teacher.stopShare": "Stop sharing",
    "teacher.mute": "Mute (my microphone)",
    "teacher.unmute": "Unmute (my microphone)",
    "teacher.cameraOff": "Turn my camera off",
    "teacher.cameraOn": "Turn my camera on",
    "teacher.end": "End the lesson",
    "teacher.endConfirm": "Press again to end",
    "teacher.link": "Classroom links (one per classroom: copy and send)",
    "teacher.copy": "Copy",
    "teacher.copied": "Copied",
    "teacher.noLink": "No classroom link: make the teacher link with “ketang lesson create”",
    "teacher.classrooms": "Classrooms",
    "teacher.noClassrooms": "No classroom has joined yet",
    "teacher.col.name": "Classroom",
    "teacher.col.loss": "Loss",
    "teacher.col.rtt": "RTT",
    "teacher.col.bitrate": "Received",
    "teacher.col.state": "Reception",
    "teacher.col.video": "Video",
    "video.video": "On",
    "video.audio": "Audio only",
    "video.trial": "Trying video",
    "video.courseware": "Courseware only",
    "video.chosen": "Audio only (classroom's choice)",
    "layer.0": "high",
    "layer.1": "medium",
    "layer.2": "low",
    "teacher.rttUnknown": "not reported by the server",
    "teacher.screenOn": "Sharing courseware",
    "teacher.screenOnSound": "Sharing courseware with its sound (every classroom hears it)",
    "teacher.screenOnSilent": "Sharing courseware without sound (to play a clip's sound, share a browser tab and tick \u201cShare tab audio\u201d)",
    "teacher.reconnecting": "Connection lost, reconnecting… (classrooms resume by themselves)",
    "teacher.replaced": "This lesson was opened in another window; this one has stopped.",
    "teacher.shareError": "Cannot share the screen: {error}",
    "classroom.title": "Classroom",
    "classroom.enter": "Enter the lesson",
    "classroom.enterHint": "After you enter, the teacher's sound and picture will play",
    "classroom.waiting": "Waiting for the teacher to start…",
    "classroom.live": "Live",
    "classroom.connecting": "Connecting…",
    "classroom.reconnecting": "Connection lost, reconnecting…",
    "classroom.reconnected": "Reconnected",
    "classroom.fullscreen": "Full screen",
    "classroom.audioOnly": "Audio only",
    "classroom.videoBack": "Video again",
    "classroom.lowVideo": "Low video",
    "classroom.autoVideo": "Automatic video",
    "classroom.lowVideoOn": "Low video: only the smallest video layer is received, for a calmer link",
    "classroom.audioOnlyOn": "Audio only: the server no longer sends video, saving the network",
    "classroom.slidesOnly": "Slides only",
    "classroom.camerasBack": "Teacher video back",
    "classroom.slidesOnlyOn": "Slides and sound only: the teacher's camera is no longer received, saving the network",
    "classroom.pipSwap": "⇄ Swap",
    "classroom.pipHide": "Hide",
    "classroom.pipShow": "Show small picture",
    "classroom.noVideo.audioOnly": "Audio only: the picture is off, the teacher's voice plays on",
    "classroom.noVideo.noSlides": "Slides only: the teacher is not sharing courseware now; the sound plays on",
    "classroom.noVideo.noCamera": "The teacher's camera is off; the sound plays on",
    "classroom.noVideo.paused": "Weak network: the picture is paused, the sound plays on; it comes back by itself",
    "classroom.exitFullscreen": "Exit full screen",
    "classroom.courseware": "Courseware",
    "classroom.teacher": "Teacher",
    "quality.good": "Good signal",
    "quality.fair": "Fair signal",
    "quality.poor": "Poor signal",
    "quality.none": "No picture yet",
    "quality.detail": "loss {loss} · {fps} fps · jitter {jitter} · RTT {rtt}",
    "teacher.stageCaption": "On stage: {name}",
    "teacher.wall": "Classroom cameras",
    "teacher.noWall": "Classrooms appear here once they join",
    "teacher.page": "Page {page} of {pages}",
    "teacher.prevPage": "Previous",
    "teacher.nextPage": "Next",
    "teacher.pageN": "Page {page}",
    "tile.stageOn": "On stage",
    "tile.stageOff": "Off stage",
    "tile.mute": "Mute",
    "tile.unmute": "Unmute",
    "tile.remove": "Remove",
    "tile.removeConfirm": "Really remove?",
    "tile.hand": "Hand up",
    "tile.muted": "Muted",
    "tile.onStage": "On stage",
    "tile.stageTitle": "On stage: every classroom sees and hears this classroom",
    "tile.muteTitle": "Mute: nobody hears this classroom until the teacher unmutes it",
    "tile.removeTitle": "Remove: this classroom's link cannot join this lesson again (press again to confirm)",
    "teacher.hands": "Raised hands",
    "teacher.noHands": "No raised hands",
    "teacher.handAt": "raised at {time}",
    "teacher.manage": "Moderation",
    "teacher.muteAll": "Mute all classrooms",
    "teacher.unmuteAll": "Unmute all classrooms",
    "teacher.lock": "Lock the lesson",
    "teacher.unlock": "Unlock",
    "teacher.locked": "Locked: new classrooms cannot join (dropped ones can come back)",
    "teacher.chatOff": "Turn classroom chat off",
    "teacher.chatOn": "Turn classroom chat on",
    "teacher.chatIsOff": "Classroom chat is off: only the teacher can write",
    "teacher.attendance": "Attendance",
    "teacher.downloadCsv": "Download attendance (CSV)",
    "teacher.noAttendance": "No attendance yet",
    "att.name": "Classroom",
    "att.state": "State",
    "att.present": "Min.",
    "att.sessions": "Sessions",
    "att.hands": "Hands",
    "att.stage": "Stage min.",
    "att.loss": "Loss",
    "att.rtt": "RTT",
    "att.kbps": "kbit/s",
    "att.video": "Video",
    "att.online": "online",
    "att.left": "left",
    "chat.title": "Chat",
    "chat.placeholder": "Type a message, Enter to send",
    "chat.send": "Send",
    "chat.delete": "Delete",
    "chat.empty": "No messages yet",
    "chat.off": "The teacher has turned classroom chat off",
    "chat.teacher": "Teacher",
    "classroom.micOn": "Microphone on",
    "classroom.micOff": "Microphone off",
    "classroom.micMuted": "Muted by the teacher",
    "classroom.noMic": "No microphone",
    "classroom.hand": "Raise hand",
    "classroom.handDown": "Lower hand",
    "classroom.handUp": "Hand raised",
    "classroom.handPosition": "Hand raised, number {position} in the queue",
    "classroom.onStage": "You are on stage: every classroom sees and hears you. Turn the microphone on to speak.",
    "classroom.stageGuest": "On stage: {name}",
    "classroom.self": "This classroom",
    "classroom.seen": "This classroom (the teacher is watching)",
    "classroom.unseen": "This classroom (not on the teacher's screen: not sent, to save the network)",
    "classroom.mutedByTeacher": "The teacher has muted this classroom",
    "classroom.publishError": "The teacher cannot see this classroom for now: {error}",
    "error.stage_full": "The stage is full: take a classroom off stage first",
    "error.not_found": "That classroom is no longer in the lesson",
    "error.chat_off": "The teacher has turned classroom chat off",
    "error.forbidden": "Not allowed",
    "error.rate_limited": "Too many actions, try again in a moment",
    "error.lesson_locked": "The lesson is locked",
    "error.removed": "Removed from the lesson",
    "error.unavailable": "The server cannot reach the lesson's state just now; trying again…",
    "error.draining": "The server is restarting; reconnecting by itself in a moment…",
    "lesson.ended": "The lesson has ended",
    "lesson.endedNext":
      "The lesson has ended; the camera and microphone are off. You may close this page; the recording "
      + "appears in the library once reviewed.",
    "teacher.endedNext":
      "The lesson has ended; the camera and microphone are off. To teach again, press “Start the lesson”.",
    "teacher.endConfirmText": "Every classroom stops watching; this cannot be undone.",
    "teacher.endYes": "Yes, end it",
    "confirm.cancel": "Cancel",
    "tile.removeConfirmText": "Remove “{name}”: its link cannot join this lesson again.",
    "classroom.onStageMuted":
      "You are on stage, but the teacher has muted this classroom: wait until the teacher unmutes it to "
      + "speak.",
    "classroom.micClosed": "Microphone off",
    "live.camera": "Camera on",
    "live.mic": "Microphone on (the teacher hears it)",
    "live.micOff": "Microphone off",
    "resume": "Continue here",
    "retryNow": "Try again now",
    "error.link": "This link is invalid or has expired. Ask the teacher to send it again.",
    "error.link.teacher": "This link is invalid or has expired: make new links with “ketang lesson create” "
      + "(the server's administrator runs it).",
    "error.generic.teacher": "Something went wrong (code: {code}). Reload the page; if it still fails, ask the "
      + "server's administrator.",
    "error.locked":
      "The lesson is locked: new classrooms cannot join now. Ask the teacher to unlock it, then press "
      + "“Enter the lesson” again.",
    "error.removedForGood":
      "The teacher removed this classroom from the lesson; it cannot join again. Ask the teacher if this "
      + "is a mistake.",
    "error.replaced":
      "This link was opened in another window or device; this one has stopped (camera and microphone off). "
      + "Press “Continue here” to continue in this window.",
    "error.lesson_ended":
      "The lesson has ended. You may close this page; the recording appears in the library once reviewed.",
    "error.unreachable": "Cannot reach the server: check the network. Trying again in {seconds} s…",
    "error.unreachableNow": "Cannot reach the server: check the network. Trying again…",
    "error.cameraDenied":
      "The browser blocked the camera or microphone: click the lock (or camera) icon left of the address "
      + "bar, set Camera and Microphone to Allow, then reload this page. Inside WeChat, tap “…” and choose "
      + "“Open in browser”.",
    "error.cameraBusy":
      "Another program is using the camera or microphone (another browser window, a video-call app…): "
      + "close it, then reload this page.",
    "error.noCamera": "No camera or microphone found: connect one, then reload this page.",
    "error.noMicrophone": "No microphone found: nobody hears this classroom. Connect one, then reload this page.",
    "error.insecure":
      "The camera and microphone work only on HTTPS pages (an address starting with https://, or localhost "
      + "on this computer). Open this page with an https:// link; if there is none, ask the administrator to "
      + "set up HTTPS for the server.",
    "error.generic": "Something went wrong (code: {code}). Reload the page; if it still fails, ask the teacher.",
    "classroom.stillWatching": "{error} You can still watch.",
    // the resource library's pages (client_web/library/)
    library: "Resource library", search: "Search", searchPlaceholder: "Topic, teacher, school, chapter…", all: "All",
    stage: "Stage", subject: "Subject", grade: "Grade", edition: "Textbook edition", volume: "Volume", unit: "Unit",
    chapter: "Chapter", teacher: "Teacher", school: "School", title: "Title", description: "Description",
    language: "Language", date: "Date", duration: "Duration", size: "Size", license: "License", state: "State",
    results: "{n} lessons", noResults: "No lessons found", prev: "Previous", next: "Next", page: "Page {p} of {n}",
    "state.recording": "Recording", "state.processing": "Processing", "state.awaiting_review": "Awaiting review",
    "state.published": "Published", "state.rejected": "Rejected",
    download: "Download", downloadWebm: "Download original WebM", downloadMp4: "Download MP4", makeMp4: "Make MP4",
    exporting: "Making MP4: {p}", exportFailed: "Making the MP4 failed: try again later",
    edit: "Edit details", save: "Save", saved: "Saved",
    review: "Review", publish: "Approve and publish", reject: "Send back", note: "Reviewer's note",
    resubmit: "Submit for review again", reviewNote: "Review note: {note} ({who})", back: "Back to the library",
    notFound: "This lesson does not exist, or you may not see it.", signIn: "Not signed in: published lessons only.",
    minutes: "{m} min",
    incomplete: "Incomplete",
    "incomplete.disk": "Incomplete recording: the server's disk filled up during the lesson, so the recording stops "
      + "early at that point and the rest is missing; seeking may be slow.",
    "incomplete.other": "Incomplete recording: the server could not write it during the lesson, so the recording "
      + "stops early at that point and the rest is missing; seeking may be slow.",
  },
};

export const lang = new URLSearchParams(location.search).get("lang") === "en" ? "en" : "zh";

/** The text for `key`, with {name} placeholders filled from `vars`.
 *  @param {string} key  @param {Record<string, string | number>} [vars]  @returns {string} */
export function t(key, vars = {}) {
  const text = TEXT[lang][key] ?? TEXT.zh[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, /** @type {string} */ name) => String(vars[name] ?? ""));
}

/** Whether `key` has a text (error codes the page knows how to say).
 *  @param {string} key */
export function hasText(key) {
  return key in TEXT.zh;
}

/** Fill every element carrying data-i18n (text), data-i18n-title (tooltip) or data-i18n-placeholder.
 *  @param {ParentNode} [root] */
export function applyText(root = document) {
  document.documentElement.lang = lang === "en" ? "en" : "zh-CN";
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.getAttribute("data-i18n") || "");
  for (const el of root.querySelectorAll("[data-i18n-title]")) {
    if (el instanceof HTMLElement) el.title = t(el.dataset.i18nTitle || "");
  }
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) {
    if (el instanceof HTMLInputElement || el instanceof HTMLTextAreaElement) {
      el.placeholder = t(el.dataset.i18nPlaceholder || "");
    }
  }
}

/** A link to the same page in the other language, keeping the fragment (the token). */
export function otherLanguageHref() {
  const url = new URL(location.href);
  if (lang === "en") url.searchParams.delete("lang");
  else url.searchParams.set("lang", "en");
  return url.pathname + url.search + url.hash;
}

export const otherLanguageLabel = lang === "en" ? "中文" : "English";

/** What an incomplete library item (`incomplete`: the server's reason, in English words) means for the viewer, in
 *  one line of the page's language: a full disk, or another failed write.
 *  @param {string | null | undefined} reason */
export function incompleteText(reason) {
  return t(/disk (is|was) full/.test(reason || "") ? "incomplete.disk" : "incomplete.other");
}

// -- errors: every error a page shows goes through this one table ------------------------------------------------

/** What the page says for each error code: the server's codes (docs/protocol.md, *Errors* and close codes), the
 *  page's own (`replaced`, `unreachable`, the camera's). A code not listed gets `error.generic` with the code;
 *  exception or server text never reaches the page. */
const ERRORS = /** @type {Record<string, string>} */ ({
  token_invalid: "error.link",
  token_expired: "error.link",
  token_wrong_lesson: "error.link",
  token_missing: "token.missing",
  lesson_locked: "error.locked",
  removed: "error.removedForGood",
  replaced: "error.replaced",
  lesson_ended: "error.lesson_ended",
  unreachable: "error.unreachableNow",
  unavailable: "error.unavailable",
  draining: "error.draining",
  stage_full: "error.stage_full",
  not_found: "error.not_found",
  chat_off: "error.chat_off",
  forbidden: "error.forbidden",
  rate_limited: "error.rate_limited",
  camera_denied: "error.cameraDenied",
  camera_busy: "error.cameraBusy",
  no_camera: "error.noCamera",
  no_microphone: "error.noMicrophone",
  insecure: "error.insecure",
});

/** The browser's names for getUserMedia's failures, as our codes. */
const MEDIA_ERRORS = /** @type {Record<string, string>} */ ({
  NotAllowedError: "camera_denied",
  SecurityError: "camera_denied",
  PermissionDeniedError: "camera_denied",
  NotReadableError: "camera_busy",
  TrackStartError: "camera_busy",
  AbortError: "camera_busy",
  NotFoundError: "no_camera",
  DevicesNotFoundError: "no_camera",
  OverconstrainedError: "no_camera",
});

/** The code of any error a page meets: a server refusal's or a page error's `code` (a string), a media error by
 *  its name, a failed fetch as `unreachable`; anything else `client`.
 *  @param {unknown} err  @returns {string} */
export function errorCode(err) {
  if (err && typeof err === "object") {
    const { code, name } = /** @type {{code?: unknown, name?: unknown}} */ (err);
    if (typeof code === "string" && code) return code;
    if (typeof name === "string" && name in MEDIA_ERRORS) return MEDIA_ERRORS[name];
    if (err instanceof TypeError && /fetch|network/i.test(err.message)) return "unreachable";
  }
  return "client";
}

/** What the page says for `err` (an error object or a code), in its language, with what to do next; `who`
 *  ("teacher") picks that reader's variant of a text where there is one (`<key>.teacher`).
 *  @param {unknown} err  @param {string} [who]  @returns {string} */
export function errorText(err, who = "") {
  const code = typeof err === "string" ? err : errorCode(err);
  const key = ERRORS[code] ?? (hasText(`error.${code}`) ? `error.${code}` : "error.generic");
  return t(who && hasText(`${key}.${who}`) ? `${key}.${who}` : key, { code });
}

/** An error of the page itself (not a refusal of the server), with one of the codes above. */
export class PageError extends Error {
  /** @param {string} code */
  constructor(code) {
    super(code);
    this.code = code;
  }
}
