"""Crash tests: real prefork worker and beat subprocesses, SIGKILLed at the worst moment."""
