// Interface text: Simplified Chinese by default, English with ?lang=en. A teacher who reads no English
// must be able to run a lesson, so every visible string comes from here.

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
    "teacher.mute": "静音",
    "teacher.unmute": "取消静音",
    "teacher.cameraOff": "关闭摄像头",
    "teacher.cameraOn": "打开摄像头",
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
    "teacher.rttUnknown": "服务器未提供",
    "teacher.screenOn": "正在共享课件",
    "teacher.reconnecting": "网络中断，正在重新连接…（各教室稍后自动恢复）",
    "teacher.replaced": "本课程已在另一个窗口打开，本窗口已停止。",
    "teacher.deviceError": "无法打开摄像头或麦克风：{error}",
    "teacher.shareError": "无法共享屏幕：{error}",
    "classroom.title": "听讲教室",
    "classroom.enter": "进入课堂",
    "classroom.enterHint": "点击进入后将播放老师的声音和画面",
    "classroom.waiting": "等待老师开始上课…",
    "classroom.live": "正在上课",
    "classroom.connecting": "正在连接…",
    "classroom.reconnecting": "网络中断，正在重新连接…",
    "classroom.reconnected": "已重新连接",
    "classroom.replaced": "此教室链接已在另一个窗口打开，本窗口已停止。",
    "classroom.fullscreen": "全屏",
    "classroom.audioOnly": "只听声音",
    "classroom.videoBack": "恢复视频",
    "classroom.audioOnlyOn": "已切换为只听声音：服务器不再发送视频，节省网络",
    "classroom.exitFullscreen": "退出全屏",
    "classroom.courseware": "课件",
    "classroom.teacher": "老师",
    "quality.good": "信号良好",
    "quality.fair": "信号一般",
    "quality.poor": "信号较差",
    "quality.none": "暂无画面",
    "quality.detail": "丢包 {loss} · 帧率 {fps} · 抖动 {jitter} · 时延 {rtt}",
    "lesson.ended": "课程已结束",
    "error": "出错了：{error}",
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
    "teacher.mute": "Mute",
    "teacher.unmute": "Unmute",
    "teacher.cameraOff": "Camera off",
    "teacher.cameraOn": "Camera on",
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
    "teacher.rttUnknown": "not reported by the server",
    "teacher.screenOn": "Sharing courseware",
    "teacher.reconnecting": "Connection lost, reconnecting… (classrooms resume by themselves)",
    "teacher.replaced": "This lesson was opened in another window; this one has stopped.",
    "teacher.deviceError": "Cannot open camera or microphone: {error}",
    "teacher.shareError": "Cannot share the screen: {error}",
    "classroom.title": "Classroom",
    "classroom.enter": "Enter the lesson",
    "classroom.enterHint": "After you enter, the teacher's sound and picture will play",
    "classroom.waiting": "Waiting for the teacher to start…",
    "classroom.live": "Live",
    "classroom.connecting": "Connecting…",
    "classroom.reconnecting": "Connection lost, reconnecting…",
    "classroom.reconnected": "Reconnected",
    "classroom.replaced": "This classroom link was opened in another window; this one has stopped.",
    "classroom.fullscreen": "Full screen",
    "classroom.audioOnly": "Audio only",
    "classroom.videoBack": "Video again",
    "classroom.audioOnlyOn": "Audio only: the server no longer sends video, saving the network",
    "classroom.exitFullscreen": "Exit full screen",
    "classroom.courseware": "Courseware",
    "classroom.teacher": "Teacher",
    "quality.good": "Good signal",
    "quality.fair": "Fair signal",
    "quality.poor": "Poor signal",
    "quality.none": "No picture yet",
    "quality.detail": "loss {loss} · {fps} fps · jitter {jitter} · RTT {rtt}",
    "lesson.ended": "The lesson has ended",
    "error": "Something went wrong: {error}",
  },
};

export const lang = new URLSearchParams(location.search).get("lang") === "en" ? "en" : "zh";

/** The text for `key`, with {name} placeholders filled from `vars`. */
export function t(key, vars = {}) {
  const text = TEXT[lang][key] ?? TEXT.zh[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(vars[name] ?? ""));
}

/** Fill every element carrying data-i18n (text) or data-i18n-title (tooltip). */
export function applyText(root = document) {
  document.documentElement.lang = lang === "en" ? "en" : "zh-CN";
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle);
}

/** A link to the same page in the other language, keeping the fragment (the token). */
export function otherLanguageHref() {
  const url = new URL(location.href);
  if (lang === "en") url.searchParams.delete("lang");
  else url.searchParams.set("lang", "en");
  return url.pathname + url.search + url.hash;
}

export const otherLanguageLabel = lang === "en" ? "中文" : "English";
