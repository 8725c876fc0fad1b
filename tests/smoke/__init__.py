"""The examples app as a deployment runs it: the smoke scenarios (``scenarios.py``) on a
local prefork worker (``test_local.py``) and in containers (``test_containers.py``)."""
