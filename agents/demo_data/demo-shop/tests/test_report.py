from shopcart.report import format_money, line_item, sales_summary


def test_format_money_of_whole_and_tens_of_cents():
    assert format_money(1250) == "$12.50"


def test_format_money_pads_single_digit_cents():
    assert format_money(1205) == "$12.05"


def test_line_item_shows_name_quantity_and_total():
    assert line_item("mug", 2, 625) == "mug                  x  2  $12.50"


def test_sales_summary_starts_with_one_line_per_item():
    summary = sales_summary([("mug", 2, 625), ("tea", 1, 300)])
    assert summary.splitlines()[:2] == [line_item("mug", 2, 625), line_item("tea", 1, 300)]
