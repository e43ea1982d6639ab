"""``python -m mail_svc``: run the mail service."""

from mail_svc.app import serve
from mail_svc.config import MailConfig
from kiln_platform import service_main

if __name__ == "__main__":
    raise SystemExit(service_main.run("mail_svc", MailConfig, serve))
