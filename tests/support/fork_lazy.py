"""A module test_fork.py has a child fetch, forget, then its fork import."""
VALUE = u'served once'
