"""Spine webhook deliveries: verified, stored durably, deduplicated, read back in order.

- `signature`: the `Spine-Signature` rule (`sign`, `verify`), shared with the simulator;
- `inbox`: the durable inbox in the archive's ledger (`Inbox.store`, `Inbox.since`) and the
  one decoding rule of its records (`decode_record`), shared with the audit mirror;
- `app`: the receiver, a Starlette ASGI app (`create_app`), mountable in another app;
- `server`: uvicorn around it (`serve`, and `WebhookServer` in a thread for tests).

No Dagster here, and nothing is imported eagerly: the audit reads the inbox without loading
Starlette.
"""
