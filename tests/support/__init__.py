"""Helpers the tests share: data writers, fixtures and stand-ins (not tests themselves)."""
