"""App Engine's mail rules (kiln.mailrules), the service's message checks and rendering (mail_svc.message), the
router's gate on /_ah/mail/, and the proofs that vouch for a signed-in user or a platform request (kiln_platform.auth)."""

from __future__ import annotations

import email
import email.header
import email.policy
import email.utils
import io
import pathlib
import zipfile

import pytest

from kiln import mailrules
from kiln_platform import appyaml, auth
from kiln.api import mail
from kiln.pb.mail.v1 import mail_pb2 as pb
from mail_svc import message as rendering
from mail_svc.errors import (BadMessageError, InvalidAttachmentTypeError, InvalidEmailError, InvalidHeaderNameError,
                             MessageTooLargeError, MissingRecipientsError)
from router.app import _refuse_inbound_mail
from kiln_platform.handlers import Matcher
from router.versions import Version
from tests.unit.zips import nested, zipped


@pytest.mark.parametrize("value", ["a@example.com", "Ann Example <ann@example.com>", '"odd name"@example.com',
                                   "user+tag@sub.example.co.uk", "dev@localhost", "J\u00f6 <jo@ex\u00e4mple.de>"])
def test_valid_addresses_pass(value):
    assert mailrules.address_problem(value) is None


@pytest.mark.parametrize("value, why", [
    ("", "empty"), ("plain", "local-part@domain"), ("a@b.com\r\nBcc: x@y.com", "line break"),
    ("a@b.com, c@d.com", "more than one"), ("a..b@example.com", "local part"), ("a@-x.example", "domain"),
    ("a@exa mple.com", "address"), ("x" * 250 + "@example.com", "longer"),
])
def test_invalid_addresses_name_the_problem(value, why):
    assert why in (mailrules.address_problem(value) or "")


@pytest.mark.parametrize("name", ["virus.exe", "x.BAT", "dir/run.vbs", "a.tar.scr"])
def test_blocked_extensions_are_refused(name):
    assert "not allowed" in mailrules.attachment_problem(name, b"data")


def test_zip_holding_a_blocked_file_is_refused():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("inner/setup.CMD", "x")
    assert "setup.CMD" in mailrules.attachment_problem("bundle.zip", buffer.getvalue())


# Names Windows runs as x.exe (or x.bat…): trailing dots, spaces and other ignored characters, stream and version
# suffixes, case, full-width and lookalike characters NFKC maps to ASCII, invisible format characters.
DISGUISED = ["x.exe.", "x.exe ", "x.exe. . .", "x.exe\u3000", "x.exe::$DATA", "x.exe:hidden", "x.txt:payload.exe",
             "x.exe;", "x.exe;1", "X.ExE", "x.\uff45\uff58\uff45", "x\u2024exe", "x.e\u200bxe", "x.exe\u200e",
             "x.\u24d4xe", "dir\\x.exe", "dir/x.exe/", "x.exe\u00a0", "ｘ．ＢＡＴ"]


@pytest.mark.parametrize("name", DISGUISED)
def test_blocked_extensions_are_refused_in_every_form_windows_runs(name):
    assert "not allowed" in (mailrules.attachment_problem(name, b"data") or "")


@pytest.mark.parametrize("name", ["report.pdf", "exe.txt", "archive.tar.gz", "notes", "x.exes", "x.ex"])
def test_names_that_only_look_similar_pass(name):
    assert mailrules.attachment_problem(name, b"data") is None


@pytest.mark.parametrize("inner", ["setup.exe", "setup.exe.", "setup.exe ", "SETUP.EXE::$DATA", "run.vbs;1"])
@pytest.mark.parametrize("depth", [2, 3, 4])
def test_a_blocked_file_in_a_nested_zip_is_refused(inner, depth):
    problem = mailrules.attachment_problem("bundle.zip", nested(depth, {"readme.txt": "hi", inner: "MZ"}))
    assert problem is not None and "not allowed" in problem and repr(inner) in problem


def test_a_nested_zip_found_by_its_contents_is_searched_too():
    problem = mailrules.attachment_problem("bundle.zip", zipped({"photos.dat": zipped({"x.exe": "MZ"})}))
    assert problem is not None and "'x.exe'" in problem


def test_zips_nested_deeper_than_the_bound_are_refused_not_expanded():
    problem = mailrules.attachment_problem("bundle.zip", nested(mailrules.MAX_ZIP_DEPTH + 1, {"a.txt": "harmless"}))
    assert problem is not None and f"more than {mailrules.MAX_ZIP_DEPTH} deep" in problem


def test_a_harmless_nested_zip_within_the_bound_passes():
    assert mailrules.attachment_problem("bundle.zip", nested(mailrules.MAX_ZIP_DEPTH, {"a.txt": "x"})) is None


def test_a_nested_zip_bomb_is_refused_by_its_declared_size(monkeypatch):
    monkeypatch.setattr(mailrules, "MAX_ZIP_EXPANSION", 1024 * 1024)
    bomb = zipped({"bomb.zip": zipped({"zeros.txt": b"\0" * (2 * 1024 * 1024)}) + b"\0" * (1024 * 1024)})
    problem = mailrules.attachment_problem("bundle.zip", bomb)
    assert problem is not None and "expands past" in problem


def test_an_archive_with_too_many_files_is_refused(monkeypatch):
    monkeypatch.setattr(mailrules, "MAX_ZIP_MEMBERS", 50)
    problem = mailrules.attachment_problem("bundle.zip", zipped({f"f{i}.txt": "x" for i in range(51)}))
    assert problem is not None and "more than 50 files" in problem


def test_an_encrypted_nested_zip_cannot_hide_a_file():
    data = bytearray(zipped({"inner.zip": zipped({"a.txt": "x"})}))
    # Mark the member encrypted in its local and central headers (general-purpose flag bit 0).
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.index(signature)
        data[at + flag_at] |= 1
    problem = mailrules.attachment_problem("bundle.zip", bytes(data))
    assert problem is not None and "encrypted" in problem


def test_corrupt_zip_is_refused_and_harmless_files_pass():
    assert "not a readable ZIP" in mailrules.attachment_problem("bundle.zip", b"PK\x03\x04garbage")
    assert mailrules.attachment_problem("report.pdf", b"%PDF-1.4") is None


@pytest.mark.parametrize("name, value, ok", [
    ("In-Reply-To", "<a@b>", True), ("list-unsubscribe", "<mailto:x@y>", True), ("Bcc", "x@y", False),
    ("X-Mailer", "me", False), ("References", "<a@b>\nBcc: x@y", False), ("Bad:Name", "x", False),
])
def test_only_allowed_headers_pass(name, value, ok):
    assert (mailrules.header_problem(name, value) is None) is ok


def message(**fields):
    base = {"sender": "a@example.com", "to": ["b@example.org"], "subject": "s", "text_body": "body"}
    return pb.MailMessage(**{**base, **fields})


def render(msg, **kw):
    return rendering.render(msg, app_id="app", mail_domain="mail.test", max_bytes=kw.pop("max_bytes", 10**6), **kw)


def test_rendered_message_has_ids_and_keeps_bcc_out_of_the_headers():
    out = render(message(bcc=["hidden@example.org"], cc=["C <c@example.org>"]))
    parsed = email.message_from_bytes(out.raw, policy=email.policy.default)
    assert out.message_id.endswith("@app.mail.test>") and parsed["Message-ID"].strip() == out.message_id
    assert out.recipients == ["b@example.org", "c@example.org", "hidden@example.org"]
    assert b"hidden@example.org" not in out.raw
    assert parsed["X-Kiln-App-Id"] == "app" and parsed["Date"]


@pytest.mark.parametrize("fields, error", [
    ({"to": []}, MissingRecipientsError), ({"to": ["x"]}, InvalidEmailError),
    ({"subject": "a\nb"}, BadMessageError), ({"text_body": ""}, BadMessageError),
    ({"headers": [pb.Header(name="From", value="x@y")]}, InvalidHeaderNameError),
    ({"attachments": [pb.Attachment(file_name="x.pif", data=b"")]}, InvalidAttachmentTypeError),
])
def test_render_refuses_bad_messages(fields, error):
    with pytest.raises(error):
        render(message(**fields))


def test_render_refuses_messages_over_the_limit():
    with pytest.raises(MessageTooLargeError):
        render(message(attachments=[pb.Attachment(file_name="big.bin", data=b"x" * 5000)]), max_bytes=4000)


def test_admin_recipients_replace_the_messages_own():
    out = render(message(to=[]), recipients_override=["boss@example.com"])
    assert out.recipients == ["boss@example.com"]


def test_user_proof_holds_only_for_its_app_user_and_time():
    proof = auth.sign_user("k", "app", "Ann@Example.com", 1000)
    assert auth.verify_user("k", proof, "app", "ann@example.com", 999)
    assert not auth.verify_user("k", proof, "app", "ann@example.com", 1002)
    assert not auth.verify_user("k", proof, "other", "ann@example.com", 999)
    assert not auth.verify_user("k", proof, "app", "bob@example.com", 999)
    assert not auth.verify_user("other key", proof, "app", "ann@example.com", 999)
    assert not auth.verify_user("", proof, "app", "ann@example.com", 999)


def test_platform_signature_binds_caller_and_request():
    sig = auth.sign_platform("k", "mail", "POST", "app.localhost", "/_ah/mail/a@b", 1000)
    assert auth.verify_platform("k", sig, "mail", "POST", "app.localhost", "/_ah/mail/a@b", 1010)
    assert not auth.verify_platform("k", sig, "cron", "POST", "app.localhost", "/_ah/mail/a@b", 1010)
    assert not auth.verify_platform("k", sig, "mail", "POST", "other.localhost", "/_ah/mail/a@b", 1010)
    assert not auth.verify_platform("k", sig, "mail", "POST", "app.localhost", "/_ah/mail/a@b", 1100)


def version(app_yaml):
    config = appyaml.parse(app_yaml)
    return Version("app", "v1", pathlib.Path("/nonexistent"), config, Matcher(config))


BASE_YAML = "runtime: python27\napi_version: 1\nthreadsafe: true\nhandlers:\n- url: /.*\n  script: main.app\n"


def test_ah_mail_is_only_for_the_mail_service():
    assert _refuse_inbound_mail(None, version(BASE_YAML + "inbound_services:\n- mail\n")).status == 403
    assert _refuse_inbound_mail("cron", version(BASE_YAML + "inbound_services:\n- mail\n")).status == 403
    assert _refuse_inbound_mail("mail", version(BASE_YAML + "inbound_services:\n- mail\n")) is None


def test_ah_mail_is_refused_for_apps_without_inbound_mail():
    refused = _refuse_inbound_mail("mail", version(BASE_YAML))
    assert refused.status == 403 and b"inbound_services" in refused.body


def test_api_checks_like_app_engines_sdk():
    assert mail.is_email_valid("a@example.com") and not mail.is_email_valid("nope")
    with pytest.raises(mail.InvalidEmailError):
        mail.check_email_valid("a@b.com\nBcc: c@d.com", "to")
    with pytest.raises(mail.MissingSubjectError):
        mail.EmailMessage(sender="a@example.com", to="b@example.org", body="x").check_initialized()
    with pytest.raises(mail.MissingBodyError):
        mail.EmailMessage(sender="a@example.com", to="b@example.org", subject="s").check_initialized()
    with pytest.raises(mail.MissingSenderError):
        mail.EmailMessage(to="b@example.org", subject="s", body="b").check_initialized()
    with pytest.raises(AttributeError):
        mail.AdminEmailMessage(to="b@example.org")
    assert mail.EmailMessage(to="a@example.org, B <b@example.org>").to == ["a@example.org", "B <b@example.org>"]


def test_inbound_message_parses_bodies_and_attachments():
    outgoing = mail.EmailMessage(sender="a@example.com", to="b@example.org", subject="S\u00e9", body="plain",
                                 html="<p>rich</p>", attachments=[mail.Attachment("data.csv", b"1,2")])
    inbound = mail.InboundEmailMessage(outgoing.to_mime_message().as_bytes())
    assert (inbound.sender, inbound.to, inbound.subject) == ("a@example.com", "b@example.org", "S\u00e9")
    assert inbound.body.decode().strip() == "plain" and inbound.html.decode().strip() == "<p>rich</p>"
    assert [(a.filename, a.payload.decode()) for a in inbound.attachments] == [("data.csv", b"1,2")]
    assert [ct for ct, _ in inbound.bodies("text/plain")] == ["text/plain"]


def test_encoded_payload_names_unknown_encodings_and_charsets():
    with pytest.raises(mail.UnknownEncodingError):
        mail.EncodedPayload("x", encoding="x-rot13").decode()
    with pytest.raises(mail.UnknownCharsetError):
        mail.EncodedPayload("x", charset="no-such-charset").decode()
    assert mail.EncodedPayload("aGk=", charset="utf-8", encoding="base64").decode() == "hi"


@pytest.mark.parametrize("headers, to, cc", [
    ("To: one@example.org\r\n", "one@example.org", ""),
    ("To: One <one@example.org>, two@example.org\r\nCc: three@example.org, Four <four@example.org>\r\n",
     "One <one@example.org>, two@example.org", "three@example.org, Four <four@example.org>"),
    ("To: =?utf-8?q?Caf=C3=A9?= <cafe@example.org>, two@example.org\r\n", "Caf\u00e9 <cafe@example.org>, two@example.org",
     ""),
    ("To: one@example.org\r\nTo: two@example.org, three@example.org\r\n",
     ["one@example.org", "two@example.org, three@example.org"], ""),
    ("Cc: only-cc@example.org\r\n", "", "only-cc@example.org"),
])
def test_inbound_recipients_are_the_header_text_as_app_engines_are(headers, to, cc):
    inbound = mail.InboundEmailMessage(f"From: a@example.com\r\n{headers}Subject: s\r\n\r\nbody\r\n".encode())
    assert (inbound.to, inbound.cc) == (to, cc)


def test_a_message_built_from_an_inbound_one_keeps_its_recipients_as_a_list():
    inbound = b"From: a@example.com\r\nTo: One <one@example.org>, two@example.org\r\nSubject: s\r\n\r\nbody\r\n"
    assert mail.EmailMessage(inbound).to == ["One <one@example.org>", "two@example.org"]


@pytest.mark.parametrize("sender, name, address", [
    ("noreply@app.appspotmail.com", "", "noreply@app.mail.example.com"),
    ("Robot <robot@App.AppSpotMail.COM>", "Robot", "robot@app.mail.example.com"),
    ('"odd name"@app.appspotmail.com', "", '"odd name"@app.mail.example.com'),
    ("Caf\u00e9 <news@app.appspotmail.com>", "Caf\u00e9", "news@app.mail.example.com"),
])
def test_app_engines_appspotmail_sender_becomes_the_apps_mail_domain(sender, name, address):
    delivered = mailrules.deployment_sender(sender, "app", "mail.example.com")
    assert mailrules.address_problem(delivered) is None
    found_name, found_address = email.utils.parseaddr(delivered)
    assert (str(email.header.make_header(email.header.decode_header(found_name))), found_address) == (name, address)


@pytest.mark.parametrize("sender", ["robot@other.appspotmail.com", "robot@appspotmail.com",
                                    "robot@x.app.appspotmail.com", "robot@app.appspotmail.com.example.net",
                                    "robot@app.mail.example.com", "Boss <boss@example.com>"])
def test_other_senders_are_delivered_as_they_are(sender):
    assert mailrules.deployment_sender(sender, "app", "mail.example.com") == sender
