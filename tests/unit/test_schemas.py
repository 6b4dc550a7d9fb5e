"""Order validation details that are not obvious from the contract."""

import pytest
from pydantic import ValidationError

from api.schemas import OrderIn
from tests.support.orders import order_body


def test_country_codes_are_upper_cased_and_test_addresses_accepted() -> None:
    body = order_body({"WIDGET": 1}, customer_email="Ada@Bounce.test")
    body["shipping_address"]["country"] = "us"

    order = OrderIn.model_validate(body)

    assert order.shipping_address.country == "US"
    assert order.customer_email.endswith("@bounce.test")


def test_a_repeated_sku_is_named_in_the_error() -> None:
    body = order_body({"A": 1})
    body["items"].append({"sku": "A", "quantity": 1})

    with pytest.raises(ValidationError, match="repeated: A"):
        OrderIn.model_validate(body)
