"""Reading the audit log (tally.audit.v1.AuditService).

Every use case of every service writes its events through `core.audit`, in its own
transaction; this package only reads them back. It sits in account_svc, the platform's
service package (accounts, identity, and this reader), because `core/` holds no
servicers and one read-only RPC does not make a service package of its own.
"""
