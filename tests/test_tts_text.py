"""Text cleaning for speech and the streaming clause splitter."""

from __future__ import annotations

import pytest

from avatarchat.handlers.tts.text import Clause, ClauseSplitter, clean_for_speech, without_dangling_end

REPLY = (
    "Hello there! I met Dr. Smith yesterday, e.g. at the clinic. Pi is about 3.14, and honestly, "
    "that is a fairly long clause to say here; yes. **Great** idea 🎉! #AI #Friendly\n"
    "- first item\n"
    "1. Second item\n"
    "Wait... What? It costs $3,500 at 7:30 pm. J. K. Rowling wrote it. Ok."
)


def split_whole(text: str) -> list[str]:
    s = ClauseSplitter()
    return s.feed(text) + s.flush()


def split_chars(text: str) -> list[str]:
    s = ClauseSplitter()
    return [c for ch in text for c in s.feed(ch)] + s.flush()


def test_streaming_char_by_char_equals_whole_text() -> None:
    assert split_chars(REPLY) == split_whole(REPLY)


@pytest.mark.parametrize("size", [2, 3, 5, 7, 11])
def test_streaming_in_token_sized_pieces_equals_whole_text(size: int) -> None:
    s = ClauseSplitter()
    pieces = [REPLY[i : i + size] for i in range(0, len(REPLY), size)]
    assert [c for p in pieces for c in s.feed(p)] + s.flush() == split_whole(REPLY)


def test_splits_at_sentence_ends_and_newlines() -> None:
    assert split_whole(REPLY) == [
        "Hello there!",
        "I met Dr. Smith yesterday,",  # after a 2-word opener, still the opening: a comma cuts
        "e.g. at the clinic.",
        "Pi is about 3.14, and honestly, that is a fairly long clause to say here;",
        "yes.",
        "**Great** idea 🎉!",
        "#AI #Friendly",
        "- first item",
        "1. Second item",
        "Wait...",
        "What?",
        "It costs $3,500 at 7:30 pm.",
        "J. K. Rowling wrote it.",
        "Ok.",
    ]


def test_abbreviations_initials_and_decimals_do_not_split() -> None:
    for text in ["Ask Dr. Smith about it.", "It is 3.5 metres.", "Mr. J. Doe came."]:
        assert split_whole(text) == [text]
    # (In the opening, a comma after a word or two ends a clause.)
    assert split_whole("Fruit, e.g. apples, is good.") == ["Fruit,", "e.g. apples,", "is good."]


def test_lowercase_after_a_period_continues_the_sentence() -> None:
    # (After the opening: a clause of it may also break before a joining word like "and".)
    assert split_whole("That is all fine. Use a tool etc. and then rest.") == [
        "That is all fine.", "Use a tool etc. and then rest."]


def test_first_clause_is_emitted_early_later_ones_are_longer() -> None:
    s = ClauseSplitter(first_min_words=4, min_words=8)
    out = s.feed("Well, I think so, yes, and the weather today, as you know, is lovely, so let us go. ")
    # "Well," is too short; "Well, I think so," reaches 4 words.
    assert out[0] == "Well, I think so,"
    assert out[1] == "yes, and the weather today, as you know,"
    assert s.flush() == ["is lovely, so let us go."]


def test_each_clause_tells_whether_it_ends_a_sentence_or_a_line() -> None:
    s = ClauseSplitter(first_min_words=2, min_words=2)
    text = 'Well, I think so. It is "fine." Options:\n1. Tuna salad\nAnd then, maybe not! Dr. Who and '
    assert s.feed_clauses(text) == [
        Clause("Well, I think so.", True),  # the first clause waited for 2 words, past "Well,"
        Clause('It is "fine."', True),
        Clause("Options:", True),
        Clause("1. Tuna salad", True),
        Clause("And then,", False),
        Clause("maybe not!", True),
    ]
    assert s.flush() == ["Dr. Who and"]


@pytest.mark.parametrize(("cut", "said"), [
    ("the myth of Ares (Greek:", "the myth of Ares"),
    ("the myth of Ares (Greek) and", "the myth of Ares (Greek) and"),
    ("options like [a, b", "options like"),
    ("these phases:", "these phases"),
    ("so, well —", "so, well"),
    ("(", ""),
])
def test_a_cut_clause_loses_an_open_bracket_and_trailing_punctuation(cut: str, said: str) -> None:
    assert without_dangling_end(cut) == said


def test_sentence_end_waits_for_the_next_word() -> None:
    s = ClauseSplitter()
    assert s.feed("Hello there.") == []
    assert s.feed(" ") == []
    assert s.feed("H") == ["Hello there."]
    assert s.flush() == ["H"]


def test_run_on_text_is_cut_after_max_words() -> None:
    words = " ".join(f"w{i}" for i in range(25))
    s = ClauseSplitter(max_words=10)
    out = s.feed(words) + s.flush()
    assert [len(c.split()) for c in out] == [10, 10, 5]
    assert " ".join(out) == words


def test_flush_empties_and_ignores_whitespace() -> None:
    s = ClauseSplitter()
    assert s.feed("   \n  ") == []
    assert s.flush() == []
    s.feed("Tail without end")
    assert s.flush() == ["Tail without end"]
    assert s.flush() == []


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("**Great** idea 🎉!", "Great idea!"),
        ("I love it 😀👍🏽 so much ❤️.", "I love it so much."),
        ("Family 👨‍👩‍👧 and flags 🇩🇪 too.", "Family and flags too."),
        ("That is *really* _nice_ and ~~bad~~.", "That is really nice and bad."),
        ("Run `pip install x` now.", "Run pip install x now."),
        ("## Heading here", "Heading here"),
        ("- a bullet point", "a bullet point"),
        ("* another bullet", "another bullet"),
        ("2) numbered item", "numbered item"),
        ("> quoted text", "quoted text"),
        ("See [the docs](https://example.com/x) now.", "See the docs now."),
        ("Visit https://example.com today.", "Visit today."),
        ("Have a great day! #Friendly #AI", "Have a great day!"),
        ("I love #python a lot.", "I love a lot."),
        ("We are #1 here.", "We are number 1 here."),
        ("Nice one :) really :-D", "Nice one really"),
        ("my_variable_name is set", "my variable name is set"),
        ("  lots   of\n\tspace  ", "lots of space"),
        ("Pi is 3.14, and 7:30 (8) works.", "Pi is 3.14, and 7:30 (8) works."),
        ("#AI #Friendly", ""),
        ("🎉🎉!", ""),
        ("—", ""),
    ],
)
def test_clean_for_speech(raw: str, spoken: str) -> None:
    assert clean_for_speech(raw) == spoken


def test_the_first_clause_breaks_before_a_joining_word_when_no_comma_comes() -> None:
    text = "Elephants are massive creatures with an incredible range of adaptations and skills. They live long."
    splitter = ClauseSplitter()
    clauses = [c for ch in text for c in splitter.feed(ch)] + splitter.flush()
    # Only the first clause (the one the user waits for) is cut early, and never mid-word.
    assert clauses == ["Elephants are massive creatures", "with an incredible range of adaptations and skills.",
                       "They live long."]
    partial = ClauseSplitter()
    assert partial.feed("one two three four five and") == []  # "and" may yet be "android"
    assert partial.feed("roid phones") == []


def test_the_first_clause_is_cut_after_first_max_words_without_punctuation() -> None:
    text = "The reason why the sky appears blue lies in the way light scatters. It is physics."
    splitter = ClauseSplitter(first_max_words=8)
    clauses = [c for ch in text for c in splitter.feed(ch)] + splitter.flush()
    assert clauses == ["The reason why the sky appears blue lies", "in the way light scatters.", "It is physics."]
    # Later clauses keep max_words: they play while the LLM writes, so they may be long.
    long = ClauseSplitter(first_max_words=3, max_words=30)
    text = "Yes, I see it. Word " + " ".join(["word"] * 11) + "."
    assert [c for ch in text for c in long.feed(ch)] + long.flush() == ["Yes,", "I see it.", text[15:]]


@pytest.mark.parametrize(("text", "spoken"), [
    ("Well (laughs) I can tell you.", "Well I can tell you."),
    ("*smiles* Hello!", "Hello!"),
    ("I [sighs] see.", "I see."),
    ("(Chuckling) yes.", "yes."),
    ("The (big) dog.", "The (big) dog."),  # a real aside is said
    ("He laughs at it.", "He laughs at it."),
])
def test_acted_out_stage_directions_are_not_said(text: str, spoken: str) -> None:
    assert clean_for_speech(text) == spoken


def split_streamed(text: str, **options: int) -> list[str]:
    splitter = ClauseSplitter(**options)
    return [c for ch in text for c in splitter.feed(ch)] + splitter.flush()


OLD_RULE = {"first_min_words": 4, "opening_words": 1, "first_max_words": 8,
            "first_marks_at_once": False}  # before issue 16
NEW_RULE = {"first_max_words": 8}  # the TTS stage's defaults


@pytest.mark.parametrize(("text", "new", "old"), [
    # An opener closed by a comma goes at once; before, the first clause ran on to 4+ words.
    ("Yes, the capital of France is Paris, a lovely city.",
     ["Yes,", "the capital of France is Paris,", "a lovely city."],
     ["Yes, the capital of France is Paris,", "a lovely city."]),
    ("Well, I think so, yes, and the weather today, as you know, is lovely.",
     ["Well,", "I think so,", "yes, and the weather today, as you know,", "is lovely."],
     ["Well, I think so,", "yes, and the weather today, as you know,", "is lovely."]),
    # After an opener closed by a full stop, the next clause is still the opening: it must be
    # ready when the opener has been said, so it is cut before a joining word too.
    ("Of course. Here is a simple recipe for pasta with tomatoes and basil.",
     ["Of course.", "Here is a simple recipe", "for pasta with tomatoes and basil."],
     ["Of course.", "Here is a simple recipe for pasta with tomatoes and basil."]),
    # A first clause of 4+ words ends the opening: the rest keeps the long clauses.
    ("The capital of France is Paris, which is known for its art, food and fashion.",
     ["The capital of France is Paris,", "which is known for its art, food and fashion."],
     ["The capital of France is Paris,", "which is known for its art, food and fashion."]),
])
def test_a_short_opener_is_a_clause_of_its_own(text: str, new: list[str], old: list[str]) -> None:
    assert split_streamed(text, **NEW_RULE) == new
    assert split_streamed(text, **OLD_RULE) == old


@pytest.mark.parametrize("opener", ["Sure!", "Of course.", "Hello there!", "Yes,", "Well,", "Absolutely!"])
def test_the_first_chunk_of_a_reply_with_an_opener_is_the_opener(opener: str) -> None:
    assert split_streamed(f"{opener} The capital of France is Paris.")[0] == opener


def test_the_opening_cuts_only_at_punctuation_joining_words_or_its_cap() -> None:
    # No comma with a space, no joining word: "New York City", "3.5" and "1,500" stay whole.
    assert split_streamed("Sure! New York City is about 3.5 hours away by train.", **NEW_RULE) == [
        "Sure!", "New York City is about 3.5 hours away", "by train."]
    assert split_streamed("Yes, 1,500 people live there, more or less.", **NEW_RULE) == [
        "Yes,", "1,500 people live there,", "more or less."]


def test_words_emitted_counts_what_was_cut() -> None:
    splitter = ClauseSplitter()
    assert splitter.feed("Sure! The sky is blue. ") == ["Sure!"]
    assert splitter.words_emitted == 1
    assert splitter.feed("It") == ["The sky is blue."]
    assert splitter.words_emitted == 5
    assert splitter.flush() == ["It"] and splitter.words_emitted == 6


def test_a_first_clause_ends_at_its_exclamation_or_question_mark_at_once() -> None:
    # No wait for the next token: the user is waiting for these words.
    splitter = ClauseSplitter()
    assert splitter.feed("Sure") == []
    assert splitter.feed("!") == ["Sure!"]
    assert splitter.feed(" The sky is blue.") == []  # later sentence ends wait as before
    assert splitter.feed(" It") == ["The sky is blue."]
    assert ClauseSplitter().feed("Really?") == ["Really?"]
    assert ClauseSplitter().feed("Hello there.") == []  # "Dr." and "3." need the next token
    # A second mark that comes in its own piece starts the next clause: it says nothing.
    late = ClauseSplitter()
    assert late.feed("Wow!") == ["Wow!"] and late.feed("! Great") == ["!"]
    assert late.flush() == ["Great"] and clean_for_speech("!") == ""
    assert split_whole("Wow!! Great.") == ["Wow!!", "Great."]
    assert ClauseSplitter(first_marks_at_once=False).feed("Sure!") == []
