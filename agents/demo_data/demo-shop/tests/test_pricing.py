from shopcart.pricing import apply_discount, bulk_price, total_with_tax


def test_apply_discount_returns_the_discounted_price():
    assert apply_discount(200.0, 25) == 150.0


def test_a_zero_discount_keeps_the_price():
    assert apply_discount(80.0, 0) == 80.0


def test_total_with_tax_adds_the_rate():
    assert total_with_tax(100.0, 0.2) == 120.0


def test_fewer_than_ten_units_pay_full_price():
    assert bulk_price(2.5, 4) == 10.0
