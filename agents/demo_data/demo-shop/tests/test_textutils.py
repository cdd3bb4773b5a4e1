from shopcart.textutils import normalize_whitespace, slugify, truncate


def test_slugify_joins_words_with_dashes():
    assert slugify("Blue Mug") == "blue-mug"


def test_slugify_drops_leading_and_trailing_punctuation():
    assert slugify("  Blue Mug! ") == "blue-mug"


def test_truncate_keeps_short_text():
    assert truncate("mug", 10) == "mug"


def test_truncate_never_exceeds_the_limit():
    shortened = truncate("a very long product description", 10)
    assert len(shortened) <= 10
    assert shortened.endswith("...")


def test_normalize_whitespace_collapses_runs():
    assert normalize_whitespace("  blue \t mug\n") == "blue mug"
