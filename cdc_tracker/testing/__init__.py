"""Test doubles for cdc-tracker: a strict fake RudderStack data plane and friends."""
