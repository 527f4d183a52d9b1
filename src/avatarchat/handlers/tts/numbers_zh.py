"""Numbers and common symbols in Chinese text, written out as they are read aloud.

``normalize_numbers("2024年3月5日 气温-3.5℃，涨了50%，2个人")`` →
"二零二四年三月五日 气温零下三点五摄氏度，涨了百分之五十，两个人". Years and long digit
strings (phone numbers, codes) are read digit by digit; other integers as quantities
(一千二百三十四); decimals with 点; times 10:30 as 十点三十分.
"""

from __future__ import annotations

import re

_DIGITS = "零一二三四五六七八九"
_SMALL_UNITS = ("", "十", "百", "千")
_BIG_UNITS = ("", "万", "亿", "万亿")

#: Measure words after which 2 is read 两 (两个人, not 二个人).
_LIANG_BEFORE = frozenset("个只本件位种次条张块把辆台双对名家间头匹片首句岁天周")

_SYMBOLS = {
    "%": "百分之", "％": "百分之", "‰": "千分之", "℃": "摄氏度", "°C": "摄氏度", "°": "度",
    "+": "加", "=": "等于", "×": "乘", "÷": "除以", "&": "和", "@": "艾特", "#": "井号",
    "$": "美元", "¥": "元", "￥": "元", "€": "欧元", "£": "英镑", "~": "到", "～": "到",
}


def digits_zh(digits: str) -> str:
    """Each digit read alone: "2024" → "二零二四"."""
    return "".join(_DIGITS[int(d)] for d in digits)


def _four(n: int) -> str:
    """0 < n < 10000 as a quantity, zeros inside read once (一千零五)."""
    out, zero = "", False
    for power in (3, 2, 1, 0):
        d = n // 10 ** power % 10
        if d == 0:
            zero = bool(out)
            continue
        if zero:
            out += "零"
            zero = False
        out += _DIGITS[d] + _SMALL_UNITS[power]
    return out


def int_zh(n: int) -> str:
    """A non-negative integer as a quantity: 1234 → 一千二百三十四, 10 → 十, 100000 → 十万."""
    if n == 0:
        return "零"
    groups = []
    while n:
        groups.append(n % 10000)
        n //= 10000
    if len(groups) > len(_BIG_UNITS):
        raise ValueError("number too large")
    out = ""
    for i in range(len(groups) - 1, -1, -1):
        g = groups[i]
        if g == 0:
            continue
        if out and g < 1000:
            out += "零"  # 一万零五百: a group without thousands after a higher group
        out += _four(g) + _BIG_UNITS[i]
    if out.startswith("一十"):
        out = out[1:]  # 十五, not 一十五
    return out


def number_zh(text: str) -> str:
    """A written number ("12", "3.50", "-7") read as a quantity."""
    sign = ""
    if text[0] in "-−":
        sign, text = "负", text[1:]
    whole, _, frac = text.partition(".")
    head = int_zh(int(whole)) if len(whole) <= 16 else digits_zh(whole)
    return sign + head + ("点" + digits_zh(frac) if frac else "")


_TIME = re.compile(r"(?<!\d)([01]?\d|2[0-3])[:：]([0-5]\d)(?!\d)")
_DATE = re.compile(r"(?<!\d)(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?!\d)")
_YEAR = re.compile(r"(?<!\d)(\d{2,4})(?=年)")
_PERCENT = re.compile(r"(?<![\d.])([-−]?\d+(?:\.\d+)?)\s*([%％‰])")
_TEMPERATURE = re.compile(r"(?<![\d.])([-−]?\d+(?:\.\d+)?)\s*(℃|°C|°)")
_CURRENCY_BEFORE = re.compile(r"([$¥￥€£])\s*(\d+(?:\.\d+)?)")
_RANGE = re.compile(r"(?<=\d)\s*[-~～]\s*(?=\d)")
_LONG = re.compile(r"(?<![\d.])(0\d+|\d{7,})(?![\d.])")
_NUMBER = re.compile(r"(?<![\d.])([-−]?\d+(?:\.\d+)?)")
_SYMBOL = re.compile("|".join(re.escape(s) for s in sorted(_SYMBOLS, key=len, reverse=True)))


def _quantity(m: re.Match[str]) -> str:
    text = m.group(1)
    after = m.string[m.end():m.end() + 1]
    before = m.string[m.start() - 1] if m.start() else ""
    if text == "2" and after in _LIANG_BEFORE and before != "第":  # 第二名 is an ordinal
        return "两"
    return number_zh(text)


def normalize_numbers(text: str) -> str:
    """``text`` with digits and the symbols around them written in Chinese characters."""
    text = _DATE.sub(lambda m: f"{digits_zh(m[1])}年{int_zh(int(m[2]))}月{int_zh(int(m[3]))}日", text)
    text = _TIME.sub(lambda m: f"{int_zh(int(m[1]))}点" + (f"{int_zh(int(m[2]))}分" if int(m[2]) else ""), text)
    text = _YEAR.sub(lambda m: digits_zh(m[1]), text)
    text = _PERCENT.sub(lambda m: _SYMBOLS[m[2]] + number_zh(m[1].replace("−", "-")), text)
    text = _TEMPERATURE.sub(lambda m: ("零下" + number_zh(m[1][1:]) if m[1][0] in "-−" else number_zh(m[1]))
                            + _SYMBOLS[m[2]], text)
    text = _CURRENCY_BEFORE.sub(lambda m: number_zh(m[2]) + _SYMBOLS[m[1]], text)
    text = _RANGE.sub("到", text)
    text = _LONG.sub(lambda m: digits_zh(m[1]), text)
    text = _NUMBER.sub(_quantity, text)
    return _SYMBOL.sub(lambda m: _SYMBOLS[m.group()], text)
