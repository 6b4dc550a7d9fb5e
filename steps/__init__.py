"""DBOS steps: each is one call to one downstream service, journaled in orders.saga_steps."""
