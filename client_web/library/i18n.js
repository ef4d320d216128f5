// @ts-check
// Interface text: Chinese by default, English with ?lang=en. Elements carry data-i18n="key"
// (textContent) or data-i18n-placeholder="key".
/** @type {{zh: Record<string, string>, en: Record<string, string>}} */
const STRINGS = {
  zh: {
    library: "资源库", search: "搜索", searchPlaceholder: "课题、教师、学校、章节……", all: "全部",
    stage: "学段", subject: "学科", grade: "年级", edition: "教材版本", volume: "册", unit: "单元",
    chapter: "章节", teacher: "教师", school: "学校", title: "课题", description: "简介", language: "语言",
    date: "日期", duration: "时长", size: "大小", license: "许可", state: "状态", results: "共 {n} 节课",
    noResults: "没有找到课例", prev: "上一页", next: "下一页", page: "第 {p} / {n} 页",
    "state.recording": "录制中", "state.processing": "处理中", "state.awaiting_review": "待审核",
    "state.published": "已发布", "state.rejected": "未通过",
    download: "下载", downloadWebm: "下载 WebM 原始录像", downloadMp4: "下载 MP4", makeMp4: "生成 MP4",
    exporting: "正在生成 MP4：{p}", exportFailed: "生成失败：{e}", edit: "编辑信息", save: "保存", saved: "已保存",
    review: "审核", publish: "通过并发布", reject: "退回修改", note: "审核意见", resubmit: "重新提交审核",
    reviewNote: "审核意见：{note}（{who}）", back: "返回资源库", notFound: "找不到这节课，或您无权查看。",
    signIn: "未登录：只显示已发布的课例。", error: "出错了：{e}", minutes: "{m} 分钟",
    incomplete: "不完整",
    "incomplete.disk": "录像不完整：录制时服务器磁盘已满，录像在那一刻提前结束，之后的内容没有录下；拖动进度条可能较慢。",
    "incomplete.other": "录像不完整：录制时服务器写入失败，录像在那一刻提前结束，之后的内容没有录下；拖动进度条可能较慢。",
  },
  en: {
    library: "Resource library", search: "Search", searchPlaceholder: "Topic, teacher, school, chapter…", all: "All",
    stage: "Stage", subject: "Subject", grade: "Grade", edition: "Textbook edition", volume: "Volume", unit: "Unit",
    chapter: "Chapter", teacher: "Teacher", school: "School", title: "Title", description: "Description",
    language: "Language", date: "Date", duration: "Duration", size: "Size", license: "License", state: "State",
    results: "{n} lessons", noResults: "No lessons found", prev: "Previous", next: "Next", page: "Page {p} of {n}",
    "state.recording": "Recording", "state.processing": "Processing", "state.awaiting_review": "Awaiting review",
    "state.published": "Published", "state.rejected": "Rejected",
    download: "Download", downloadWebm: "Download original WebM", downloadMp4: "Download MP4", makeMp4: "Make MP4",
    exporting: "Making MP4: {p}", exportFailed: "Export failed: {e}", edit: "Edit details", save: "Save", saved: "Saved",
    review: "Review", publish: "Approve and publish", reject: "Send back", note: "Reviewer's note",
    resubmit: "Submit for review again", reviewNote: "Review note: {note} ({who})", back: "Back to the library",
    notFound: "This lesson does not exist, or you may not see it.", signIn: "Not signed in: published lessons only.",
    error: "Error: {e}", minutes: "{m} min",
    incomplete: "Incomplete",
    "incomplete.disk": "Incomplete recording: the server's disk filled up during the lesson, so the recording stops "
      + "early at that point and the rest is missing; seeking may be slow.",
    "incomplete.other": "Incomplete recording: the server could not write it during the lesson, so the recording "
      + "stops early at that point and the rest is missing; seeking may be slow.",
  },
};

export const LANG = new URLSearchParams(location.search).get("lang") === "en" ? "en" : "zh";

/** @param {string} key  @param {Record<string, string | number>} [vars]  @returns {string} */
export function t(key, vars = {}) {
  const text = STRINGS[LANG][key] ?? STRINGS.zh[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, /** @type {string} */ name) => String(vars[name] ?? ""));
}

// What an incomplete item (`incomplete`: the server's reason, in English words) means for the viewer, in one
// line of the page's language: a full disk, or another failed write.
/** @param {string | null | undefined} reason */
export function incompleteText(reason) {
  return t(/disk (is|was) full/.test(reason || "") ? "incomplete.disk" : "incomplete.other");
}

/** @param {ParentNode} [root] */
export function translatePage(root = document) {
  document.documentElement.lang = LANG === "en" ? "en" : "zh-CN";
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.getAttribute("data-i18n") || "");
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) {
    if (el instanceof HTMLInputElement || el instanceof HTMLTextAreaElement) {
      el.placeholder = t(el.dataset.i18nPlaceholder || "");
    }
  }
}
