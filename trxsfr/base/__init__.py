"""The ground floor: what every other room builds on; imports nothing else of trxsfr."""

__version__ = "0.1.0"
