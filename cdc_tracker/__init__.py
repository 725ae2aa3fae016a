"""cdc-tracker: Postgres row changes become RudderStack identify and track calls."""

__version__ = "0.1.0"
