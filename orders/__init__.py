"""The order saga's own records: orders, their saga state, and each step's journal."""
