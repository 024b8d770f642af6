"""Test support code shared by several test packages (servers, builders); never imported by the library."""
