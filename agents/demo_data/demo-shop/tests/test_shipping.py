from shopcart.shipping import FREE_SHIPPING_FROM, shipping_cost


def test_small_orders_pay_by_weight():
    assert shipping_cost(20.0, 2.0) == 7.3


def test_express_doubles_the_cost():
    assert shipping_cost(20.0, 2.0, express=True) == 14.6


def test_orders_of_exactly_the_threshold_ship_free():
    assert shipping_cost(FREE_SHIPPING_FROM, 2.0) == 0.0
