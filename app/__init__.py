"""The composition root: server assembly, the `tally` command, the HTTP side server and migrations.

The only package that knows every other one. It builds the shared platform parts
from one Settings object, then each service module in `app.modules.MODULES`.
"""
