"""The controlled curriculum vocabulary of the library: 学段, 学科, 年级 from fixed lists, 教材版本 from a list (free
text allowed), and the synonyms people type for them (初一 = 七年级, 高一 = 十年级 …).

One module: the catalog validates and normalises with it, search expands queries with it (on both engines), and the
pages get the lists from ``GET /api/library/curriculum`` (``vocabulary()``), so nothing is listed twice.

Canonical names are what Chinese textbooks and the national curriculum standards print: 一年级 … 九年级 for the nine
years of compulsory education (so 初一 is filed as 七年级), 高一 … 高三 for 高中 (what schools and textbooks say; 十年级
… 十二年级 are its synonyms). A synonym typed into a form is stored as its canonical name; a search for either finds
both (and finds old items filed under a synonym before this list existed).
"""

from __future__ import annotations

from typing import Any, Final

STAGES: Final[tuple[str, ...]] = ("小学", "初中", "高中")

# 学科: the subjects of the national curriculum (义务教育课程方案 2022, 普通高中课程方案), in its order
SUBJECTS: Final[tuple[str, ...]] = (
    "语文", "数学", "英语", "日语", "俄语", "道德与法治", "思想政治", "历史", "地理", "科学", "物理", "化学", "生物学",
    "信息科技", "信息技术", "通用技术", "体育与健康", "艺术", "音乐", "美术", "劳动", "综合实践活动", "心理健康",
)

# 年级 by 学段 (canonical names). 六年级 is also 初中 in 五四制 regions: the stage is not checked against the grade.
GRADES: Final[dict[str, tuple[str, ...]]] = {
    "小学": ("一年级", "二年级", "三年级", "四年级", "五年级", "六年级"),
    "初中": ("七年级", "八年级", "九年级"),
    "高中": ("高一", "高二", "高三"),
}
ALL_GRADES: Final[tuple[str, ...]] = tuple(g for grades in GRADES.values() for g in grades)

# 教材版本: the editions most schools use; anything else may be typed (publishers and regional editions are many)
EDITIONS: Final[tuple[str, ...]] = (
    "人教版", "部编版", "北师大版", "苏教版", "沪教版", "外研版", "湘教版", "浙教版", "冀教版", "鲁教版", "青岛版",
    "华师大版", "粤教版", "教科版", "译林版", "北京版", "沪科版", "科学版",
)

# synonym -> canonical name, per field
SYNONYMS: Final[dict[str, dict[str, str]]] = {
    "stage": {"小学阶段": "小学", "初级中学": "初中", "高级中学": "高中", "高中阶段": "高中"},
    "subject": {"生物": "生物学", "政治": "思想政治", "思想品德": "道德与法治", "品德与生活": "道德与法治",
                "品德与社会": "道德与法治", "体育": "体育与健康", "信息": "信息技术", "综合实践": "综合实践活动"},
    "grade": {"初一": "七年级", "初二": "八年级", "初三": "九年级", "十年级": "高一", "十一年级": "高二",
              "十二年级": "高三", "小一": "一年级", "小二": "二年级", "小三": "三年级", "小四": "四年级",
              "小五": "五年级", "小六": "六年级", "1年级": "一年级", "2年级": "二年级", "3年级": "三年级",
              "4年级": "四年级", "5年级": "五年级", "6年级": "六年级", "7年级": "七年级", "8年级": "八年级",
              "9年级": "九年级"},
    "edition": {"人教": "人教版", "人民教育出版社": "人教版", "统编版": "部编版", "部编": "部编版", "北师大": "北师大版",
                "北师": "北师大版", "苏教": "苏教版", "外研": "外研版", "沪教": "沪教版"},
}
_ALLOWED: Final[dict[str, tuple[str, ...]]] = {"stage": STAGES, "subject": SUBJECTS, "grade": ALL_GRADES}
CONTROLLED_FIELDS: Final[tuple[str, ...]] = tuple(_ALLOWED)
_LABELS: Final[dict[str, str]] = {"stage": "学段 (stage)", "subject": "学科 (subject)", "grade": "年级 (grade)"}

# every name -> all the names meaning the same (itself first), for query expansion
_GROUPS: dict[str, tuple[str, ...]] = {}
for _field, _table in SYNONYMS.items():
    _by_canonical: dict[str, list[str]] = {}
    for _alias, _canonical in _table.items():
        _by_canonical.setdefault(_canonical, [_canonical]).append(_alias)
    for _names in _by_canonical.values():
        for _name in _names:
            _GROUPS[_name] = (_name, *(n for n in _names if n != _name))


def canonical(field: str, value: str) -> str:
    """``value`` under its canonical name (``初一`` → ``七年级``); unchanged when it is one already or unknown."""
    return SYNONYMS.get(field, {}).get(value, value)


def check(field: str, value: str) -> str:
    """The canonical value of a controlled field (学段, 学科, 年级), or ValueError saying what is allowed; other
    fields (教材版本 included: a list and free text) come back canonicalised only. Empty stays empty."""
    value = canonical(field, value)
    allowed = _ALLOWED.get(field)
    if not value or allowed is None or value in allowed:
        return value
    raise ValueError(f"{_LABELS[field]}: {value!r} is not in the list; choose one of {'、'.join(allowed)}")


def same_as(value: str) -> tuple[str, ...]:
    """Every name meaning ``value`` (itself first): ``七年级`` → (七年级, 初一, 7年级)."""
    return _GROUPS.get(value, (value,))


def expand_term(term: str) -> tuple[str, ...]:
    """A search term and the terms that mean the same: a whole synonym (初一), or a term holding one (初一数学 →
    七年级数学 too). Itself first."""
    if term in _GROUPS:
        return _GROUPS[term]
    for name, group in _GROUPS.items():
        if len(name) >= 2 and name in term:
            return (term, *(term.replace(name, other) for other in group if other != name))
    return (term,)


def vocabulary() -> dict[str, Any]:
    """The lists, for the pages' forms."""
    return {"stages": list(STAGES), "subjects": list(SUBJECTS), "grades": {k: list(v) for k, v in GRADES.items()},
            "editions": list(EDITIONS),
            "synonyms": {field: dict(table) for field, table in SYNONYMS.items()}}
