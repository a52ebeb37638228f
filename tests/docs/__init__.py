"""Tests of the documentation: its examples, its commands and the site build."""
