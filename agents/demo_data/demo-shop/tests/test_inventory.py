from shopcart.inventory import Inventory


def test_added_stock_is_counted():
    inventory = Inventory()
    inventory.add("mug", 3)
    inventory.add("mug", 2)
    assert inventory.count("mug") == 5


def test_removing_lowers_the_count():
    inventory = Inventory()
    inventory.add("mug", 3)
    inventory.remove("mug", 1)
    assert inventory.count("mug") == 2


def test_stock_at_the_threshold_is_low():
    inventory = Inventory()
    inventory.add("mug", 5)
    assert inventory.is_low_stock("mug", threshold=5)


def test_plenty_of_stock_is_not_low():
    inventory = Inventory()
    inventory.add("mug", 50)
    assert not inventory.is_low_stock("mug")
