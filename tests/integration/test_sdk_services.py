"""Google's SDK modules (``google.appengine.api.urlfetch``, ``mail``, ``images``) in this process, through kiln's API
proxy (kiln.sdk) to real ``python -m urlfetch_svc``, ``mail_svc`` and ``images_svc`` processes: each call is the
SDK's own, translated by kiln.sdk, and each error is the SDK's own exception."""

from __future__ import annotations

import io
import json
import time

import grpc
import pytest
from PIL import Image as PILImage

from kiln_platform import auth
from kiln_platform.supervisor import python_module
from kiln.api import _rpc
from kiln.pb.mail.v1 import mail_pb2 as mail_pb
from kiln.pb.mail.v1 import mail_pb2_grpc
from tests.integration import webservers
from tests.integration.apps import wait_for
from tests.integration.conftest import SECRET, app_metadata, service_env
from tests.unit.conftest import gae_sdk  # noqa: F401 - the fixture: the SDK importable in this process

pytestmark = pytest.mark.nats

APP = "sdkuser"
TARGET = "127.0.0.2"  # the web servers' address, allowed to this app by the URL Fetch service
PLATFORM_SECRET = "sdk-services-platform-secret"
TICKET = "HTTP_X_APPENGINE_API_TICKET"


# --- fixtures --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def services(supervisor, tmp_path_factory):
    run = supervisor.run_dir
    nats = supervisor.start_nats(tmp_path_factory.mktemp("sdknats"), name="nats-sdk-services")
    started = {}
    for name, args in (
            ("urlfetch_svc", ["--allow-internal", f"{APP}={TARGET}/32"]),
            ("images_svc", ["--workers", "2"]),
            ("mail_svc", ["--nats-url", f"nats://{nats.address}", "--outbox-dir",
                          str(tmp_path_factory.mktemp("sdkoutbox")), "--admins", f"{APP}=boss@example.com",
                          "--platform-secret", PLATFORM_SECRET])):
        ready = run / f"sdk-{name}.addr"
        started[name] = supervisor.start(f"sdk-{name}", python_module(
            name, "--listen", "127.0.0.1:0", "--ready-file", str(ready), *args), env=service_env(),
            ready_file=ready).address
    return started


@pytest.fixture(scope="module")
def proxy(gae_sdk):  # noqa: F811
    from kiln.sdk import proxy

    return proxy.install(APP)


@pytest.fixture
def request_env(services, proxy, monkeypatch):
    """This thread is a request of the app: the services' addresses, the app's token and an open API ticket."""
    from kiln.sdk import tickets

    for env, name in (("URLFETCH", "urlfetch_svc"), ("IMAGES", "images_svc"), ("MAIL", "mail_svc")):
        monkeypatch.setenv(f"KILN_{env}_ADDR", services[name])
    monkeypatch.setenv("KILN_APP_TOKEN", auth.mint_app_token(SECRET, APP))
    _rpc.reset()
    environ: dict[str, str] = {"DEFAULT_VERSION_HOSTNAME": f"{APP}.apps.example.test:8080"}
    ticket = tickets.open_ticket(APP, environ)
    monkeypatch.setenv(TICKET, ticket)
    yield environ
    tickets.close(ticket)
    _rpc.reset()


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    with webservers.serving(TARGET) as plain, \
            webservers.serving(TARGET, tls_dir=tmp_path_factory.mktemp("sdktls")) as tls:
        yield plain.base, tls.base


# --- urlfetch ---------------------------------------------------------------------------------------------------

def test_fetch_sends_method_headers_and_payload_and_returns_status_headers_and_content(request_env, web):
    from google.appengine.api import urlfetch

    result = urlfetch.fetch(web[0] + "/echo", payload=b"a=1", method=urlfetch.POST,
                            headers={"X-From": "sdk", "Content-Type": "application/x-www-form-urlencoded"})
    echoed = json.loads(result.content)
    assert (result.status_code, echoed["method"], echoed["body"]) == (200, "POST", "a=1")
    assert echoed["headers"]["X-From"] == "sdk"
    assert result.headers["content-type"] == "application/json" and result.headers["X-Multi"] == "a"
    assert result.final_url is None and result.content_was_truncated is False


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "HEAD"])
def test_fetch_uses_every_method(request_env, web, method):
    from google.appengine.api import urlfetch

    result = urlfetch.fetch(web[0] + "/echo", payload=b"x" if method in ("PUT", "PATCH") else None, method=method)
    assert result.status_code == 200
    if method != "HEAD":
        assert json.loads(result.content)["method"] == method
    else:
        assert result.content == b""


def test_fetch_follows_redirects_and_names_the_final_url(request_env, web):
    from google.appengine.api import urlfetch

    result = urlfetch.fetch(web[0] + "/redirect?to=/status?code=201")
    assert (result.status_code, result.content, result.final_url) == (201, b"status 201",
                                                                       web[0] + "/status?code=201")


def test_fetch_without_following_returns_the_redirect_itself(request_env, web):
    from google.appengine.api import urlfetch

    result = urlfetch.fetch(web[0] + "/redirect?to=/elsewhere", follow_redirects=False)
    assert (result.status_code, result.headers["Location"], result.final_url) == (302, "/elsewhere", None)


def test_a_redirect_loop_raises_the_sdks_too_many_redirects_error(request_env, web):
    from google.appengine.api import urlfetch

    with pytest.raises(urlfetch.TooManyRedirectsError):
        urlfetch.fetch(web[0] + "/loop")


def test_a_slow_server_past_the_fetch_deadline_raises_the_sdks_deadline_exceeded_error(request_env, web):
    from google.appengine.api import urlfetch

    with pytest.raises(urlfetch.DeadlineExceededError):
        urlfetch.fetch(web[0] + "/slow?s=3", deadline=0.5)
    assert urlfetch.fetch(web[0] + "/slow?s=0.1", deadline=5).content == b"slow"


def test_the_default_fetch_deadline_set_for_the_thread_applies(request_env, web):
    from google.appengine.api import urlfetch

    urlfetch.set_default_fetch_deadline(0.5)
    try:
        with pytest.raises(urlfetch.DeadlineExceededError):
            urlfetch.fetch(web[0] + "/slow?s=3")
    finally:
        urlfetch.set_default_fetch_deadline(None)


@pytest.mark.parametrize("url", ["ftp://example.com/file", "http://", "not a url", "http://exa mple.com/"])
def test_an_invalid_url_raises_the_sdks_invalid_url_error(request_env, url):
    from google.appengine.api import urlfetch

    with pytest.raises(urlfetch.InvalidURLError):
        urlfetch.fetch(url)


def test_an_untrusted_certificate_raises_the_sdks_ssl_error_unless_validation_is_off(request_env, web):
    from google.appengine.api import urlfetch

    with pytest.raises(urlfetch.SSLCertificateError):
        urlfetch.fetch(web[1] + "/", validate_certificate=True)
    assert urlfetch.fetch(web[1] + "/", validate_certificate=False).content == b"hello from 127.0.0.2"


@pytest.mark.parametrize("path", ["/garbage", "/hangup"])
def test_a_server_that_answers_badly_raises_a_download_error(request_env, web, path):
    from google.appengine.api import urlfetch

    with pytest.raises(urlfetch.DownloadError):
        urlfetch.fetch(web[0] + path)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "0x7f.1"])
def test_a_destination_kilns_policy_forbids_raises_a_download_error_naming_it(request_env, web, host):
    from google.appengine.api import urlfetch

    port = web[0].rsplit(":", 1)[1]
    with pytest.raises(urlfetch.DownloadError) as caught:
        urlfetch.fetch(f"http://{host}:{port}/")
    assert "Unable to fetch URL" in str(caught.value)


def test_a_response_over_the_limit_raises_response_too_large_unless_truncation_is_allowed(request_env, web):
    from google.appengine.api import urlfetch

    big = web[0] + f"/big?n={32 * 1024 * 1024 + 10}"
    with pytest.raises(urlfetch.ResponseTooLargeError):
        urlfetch.fetch(big, deadline=30)
    result = urlfetch.fetch(big, allow_truncated=True, deadline=30)
    assert result.content_was_truncated is True and len(result.content) == 32 * 1024 * 1024


def test_a_payload_over_ten_megabytes_raises_the_sdks_payload_too_large_error(request_env, web):
    from google.appengine.api import urlfetch

    with pytest.raises(urlfetch.PayloadTooLargeError):
        urlfetch.fetch(web[0] + "/echo", payload=b"x" * (10 * 1024 * 1024 + 1), method=urlfetch.POST)


def test_concurrent_fetches_through_rpcs_each_get_their_own_answer(request_env, web):
    from google.appengine.api import urlfetch

    rpcs = []
    for code in (200, 201, 404):
        rpc = urlfetch.create_rpc(deadline=10)
        urlfetch.make_fetch_call(rpc, web[0] + f"/status?code={code}")
        rpcs.append(rpc)
    assert [rpc.get_result().status_code for rpc in rpcs] == [200, 201, 404]


# --- mail -------------------------------------------------------------------------------------------------------

def outbox(services, subject):
    channel = grpc.insecure_channel(services["mail_svc"])
    try:
        stub = mail_pb2_grpc.MailServiceStub(channel)
        found: list[mail_pb.OutboxMessage] = []

        def present():
            found[:] = [m for m in stub.ListOutbox(mail_pb.ListOutboxRequest(), metadata=app_metadata(APP),
                                                   timeout=30).messages if m.subject == subject]
            return found

        wait_for(present, 20)
        return found
    finally:
        channel.close()


def test_send_mail_carries_every_field_of_the_message(request_env, services):
    import email
    import email.policy

    from google.appengine.api import mail

    message = mail.EmailMessage(
        sender="Robot <robot@sdkuser.mail.localhost>", to=["a@example.org", "B <b@example.org>"],
        cc="c@example.org", bcc="d@example.org", reply_to="replies@example.org", subject="every field",
        body="plain text", html="<p>html</p>", amp_html="<html amp4email><body>amp</body></html>",
        attachments=[mail.Attachment("notes.txt", b"some notes"),
                     mail.Attachment("logo.png", b"\x89PNG fake", content_id="<logo>")],
        headers={"List-Id": "kiln tests <tests.example.org>", "In-Reply-To": "<x@example.org>"})
    message.send()
    [kept] = outbox(services, "every field")
    assert kept.envelope_from == "robot@sdkuser.mail.localhost"
    assert sorted(kept.recipients) == ["a@example.org", "b@example.org", "c@example.org", "d@example.org"]
    got = email.message_from_bytes(kept.raw, policy=email.policy.default)
    assert (got["From"], got["Reply-To"], got["Cc"]) == ("Robot <robot@sdkuser.mail.localhost>",
                                                         "replies@example.org", "c@example.org")
    assert got["Bcc"] is None and got["List-Id"] == "kiln tests <tests.example.org>"
    assert got["In-Reply-To"] == "<x@example.org>"
    assert got.get_body(("plain",)).get_content().strip() == "plain text"
    assert got.get_body(("html",)).get_content().strip() == "<p>html</p>"
    assert "text/x-amp-html" in [part.get_content_type() for part in got.walk()]
    files = {part.get_filename(): (part.get_payload(decode=True), part["Content-ID"]) for part in got.walk()
             if part.get_filename()}
    assert files == {"notes.txt": (b"some notes", None), "logo.png": (b"\x89PNG fake", "<logo>")}


def test_send_mail_to_admins_reaches_the_apps_administrators(request_env, services):
    from google.appengine.api import mail

    mail.send_mail_to_admins(sender="robot@sdkuser.mail.localhost", subject="to the admins", body="alert")
    [kept] = outbox(services, "to the admins")
    assert list(kept.recipients) == ["boss@example.com"]


def test_an_administrator_may_send(request_env, services):
    from google.appengine.api import mail

    mail.send_mail(sender="boss@example.com", to="a@example.org", subject="from the boss", body="x")
    assert outbox(services, "from the boss")


def test_the_signed_in_user_may_send_with_the_routers_proof_from_the_request(request_env, services):
    from google.appengine.api import mail

    request_env["USER_EMAIL"] = "visitor@example.net"
    request_env["KILN_USER_PROOF"] = auth.sign_user(PLATFORM_SECRET, APP, "visitor@example.net", time.time() + 60)
    mail.send_mail(sender="visitor@example.net", to="a@example.org", subject="from the visitor", body="x")
    [kept] = outbox(services, "from the visitor")
    assert kept.envelope_from == "visitor@example.net"


@pytest.mark.parametrize("proof", ["", "forged", "other-app", "expired"])
def test_a_sender_without_a_valid_proof_raises_the_sdks_invalid_sender_error(request_env, services, proof):
    from google.appengine.api import mail

    request_env["USER_EMAIL"] = "visitor@example.net"
    request_env["KILN_USER_PROOF"] = {
        "": "", "forged": auth.sign_user("not the platform secret", APP, "visitor@example.net", time.time() + 60),
        "other-app": auth.sign_user(PLATFORM_SECRET, "other-app", "visitor@example.net", time.time() + 60),
        "expired": auth.sign_user(PLATFORM_SECRET, APP, "visitor@example.net", time.time() - 5)}[proof]
    with pytest.raises(mail.InvalidSenderError):
        mail.send_mail(sender="visitor@example.net", to="a@example.org", subject="refused", body="x")


def test_a_stranger_as_sender_raises_the_sdks_invalid_sender_error(request_env):
    from google.appengine.api import mail

    with pytest.raises(mail.InvalidSenderError):
        mail.send_mail(sender="stranger@example.com", to="a@example.org", subject="s", body="b")


@pytest.mark.parametrize("name", ["virus.exe", "run.vbs", "trailing.exe.", "ＳＣＲＩＰＴ.ｂａｔ"])
def test_a_blocked_attachment_raises_the_sdks_invalid_attachment_type_error(request_env, name):
    from google.appengine.api import mail

    with pytest.raises(mail.InvalidAttachmentTypeError):
        mail.send_mail(sender="boss@example.com", to="a@example.org", subject="s", body="b",
                       attachments=[(name, b"MZ")])


@pytest.mark.parametrize("fields, code", [
    ({"Header": [{"name": "X-Custom", "value": "1"}]}, "INVALID_HEADER_NAME"),
    ({"To": ["not an address"]}, "BAD_REQUEST"),
    ({"To": []}, "BAD_REQUEST"),
    ({"Attachment": [{"FileName": "a.png", "Data": b"x", "ContentID": "no brackets"}]}, "INVALID_CONTENT_ID"),
])
def test_what_the_sdk_did_not_check_is_refused_by_the_service_with_mails_code(request_env, fields, code):
    from google.appengine.api import api_base_pb2, apiproxy_stub_map, mail_service_pb2
    from google.appengine.runtime import apiproxy_errors

    message = mail_service_pb2.MailMessage(Sender="boss@example.com", To=["a@example.org"], Subject="s",
                                           TextBody="b")
    for name, value in fields.items():
        message.ClearField(name)
        getattr(message, name).extend(value if name == "To" else [
            getattr(mail_service_pb2, "MailHeader" if name == "Header" else "MailAttachment")(**v) for v in value])
    with pytest.raises(apiproxy_errors.ApplicationError) as caught:
        apiproxy_stub_map.MakeSyncCall("mail", "Send", message, api_base_pb2.VoidProto())
    assert caught.value.application_error == getattr(mail_service_pb2.MailServiceError, code)


# --- images -----------------------------------------------------------------------------------------------------

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


def encode(img, fmt="PNG", **options):
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def quadrants(width=40, height=20):
    """Red top-left, green top-right, blue bottom-left, yellow bottom-right."""
    img = PILImage.new("RGB", (width, height))
    w, h = width // 2, height // 2
    for x, y, colour in ((0, 0, RED), (w, 0, GREEN), (0, h, BLUE), (w, h, YELLOW)):
        img.paste(colour, (x, y, x + w, y + h))
    return encode(img)


def decoded(data):
    return PILImage.open(io.BytesIO(data))


def corners(data):
    img = decoded(data).convert("RGB")
    w, h = img.size
    return [img.getpixel(p) for p in ((1, 1), (w - 2, 1), (1, h - 2), (w - 2, h - 2))]


def test_resize_keeps_the_aspect_ratio(request_env):
    from google.appengine.api import images

    assert decoded(images.resize(quadrants(40, 20), width=20)).size == (20, 10)
    assert decoded(images.resize(quadrants(40, 20), height=40)).size == (80, 40)


def test_resize_crop_to_fit_with_offsets_and_allow_stretch(request_env):
    from google.appengine.api import images

    cropped = images.resize(quadrants(40, 20), 10, 10, crop_to_fit=True, crop_offset_x=0.0)
    assert decoded(cropped).size == (10, 10) and corners(cropped)[0] == RED and corners(cropped)[3] == BLUE
    right = images.resize(quadrants(40, 20), 10, 10, crop_to_fit=True, crop_offset_x=1.0)
    assert corners(right)[0] == GREEN and corners(right)[3] == YELLOW
    assert decoded(images.resize(quadrants(40, 20), 30, 30, allow_stretch=True)).size == (30, 30)


@pytest.mark.parametrize("degrees, expected", [(90, [BLUE, RED, YELLOW, GREEN]), (180, [YELLOW, BLUE, GREEN, RED]),
                                               (-90, [GREEN, YELLOW, RED, BLUE])])
def test_rotate_turns_clockwise(request_env, degrees, expected):
    from google.appengine.api import images

    out = images.rotate(quadrants(40, 20), degrees)
    assert decoded(out).size == ((20, 40) if degrees % 180 else (40, 20))
    assert corners(out) == expected


def test_flips_mirror_the_image(request_env):
    from google.appengine.api import images

    assert corners(images.horizontal_flip(quadrants())) == [GREEN, RED, YELLOW, BLUE]
    assert corners(images.vertical_flip(quadrants())) == [BLUE, YELLOW, RED, GREEN]


def test_crop_keeps_the_box(request_env):
    from google.appengine.api import images

    out = images.crop(quadrants(40, 20), 0.5, 0.0, 1.0, 0.5)
    assert decoded(out).size == (20, 10) and set(corners(out)) == {GREEN}


def test_transforms_run_in_order_and_the_image_knows_its_new_size(request_env):
    from google.appengine.api import images

    image = images.Image(quadrants(40, 20))
    image.resize(width=20)
    image.rotate(90)
    image.horizontal_flip()
    image.im_feeling_lucky()
    out = image.execute_transforms(output_encoding=images.PNG)
    assert decoded(out).size == (10, 20) and (image.width, image.height) == (10, 20)
    assert corners(out) == [RED, BLUE, GREEN, YELLOW]


@pytest.mark.parametrize("encoding, fmt", [("JPEG", "JPEG"), ("PNG", "PNG"), ("WEBP", "WEBP")])
def test_output_encoding_and_quality(request_env, encoding, fmt):
    from google.appengine.api import images

    low = images.resize(quadrants(200, 100), width=100, output_encoding=getattr(images, encoding), quality=5)
    high = images.resize(quadrants(200, 100), width=100, output_encoding=getattr(images, encoding), quality=95)
    assert decoded(low).format == fmt and decoded(high).format == fmt
    if fmt != "PNG":
        assert len(low) < len(high)


def test_correct_orientation_sets_an_exif_rotated_photo_upright(request_env):
    from google.appengine.api import images

    img = decoded(quadrants(40, 20)).convert("RGB")
    exif = PILImage.Exif()
    exif[0x0112] = 6  # the camera was turned: show rotated 90 degrees clockwise
    photo = encode(img, "JPEG", exif=exif.tobytes(), quality=95)
    upright = images.resize(photo, width=20, correct_orientation=images.CORRECT_ORIENTATION)
    assert decoded(upright).size == (20, 40)
    assert decoded(images.resize(photo, width=20)).size == (20, 10)


def test_parse_source_metadata_returns_the_sources_exif(request_env):
    from google.appengine.api import images

    exif = PILImage.Exif()
    exif[0x010F] = "KilnCam"  # Make
    image = images.Image(encode(decoded(quadrants()).convert("RGB"), "JPEG", exif=exif.tobytes()))
    image.horizontal_flip()
    image.execute_transforms(parse_source_metadata=True)
    metadata = image.get_original_metadata()
    assert metadata["Make"] == "KilnCam" and metadata["ImageWidth"] == 40


def test_composite_places_layers_by_anchor_with_opacity_on_the_canvas_colour(request_env):
    from google.appengine.api import images

    red = encode(PILImage.new("RGB", (10, 10), RED))
    blue = encode(PILImage.new("RGB", (10, 10), BLUE))
    out = images.composite([(red, 0, 0, 1.0, images.TOP_LEFT), (blue, 0, 0, 1.0, images.BOTTOM_RIGHT),
                            (red, 0, 0, 0.5, images.CENTER_CENTER)], 30, 30, color=0xFF00FF00)
    img = decoded(out).convert("RGB")
    assert img.size == (30, 30)
    assert (img.getpixel((2, 2)), img.getpixel((27, 27)), img.getpixel((27, 2))) == (RED, BLUE, GREEN)
    mid = img.getpixel((15, 15))
    assert abs(mid[0] - 128) <= 2 and abs(mid[1] - 127) <= 2 and mid[2] == 0


def test_composite_offsets_move_a_layer_from_its_anchor(request_env):
    from google.appengine.api import images

    red = encode(PILImage.new("RGB", (10, 10), RED))
    out = images.composite([(red, 5, 5, 1.0, images.TOP_LEFT)], 30, 30, color=0xFFFFFFFF,
                           output_encoding=images.JPEG, quality=95)
    img = decoded(out).convert("RGB")
    assert decoded(out).format == "JPEG"
    assert img.getpixel((1, 1))[0] > 240 and img.getpixel((1, 1))[1] > 240
    assert img.getpixel((10, 10))[0] > 240 and img.getpixel((10, 10))[1] < 20


def test_histogram_counts_each_colour(request_env):
    from google.appengine.api import images

    red, green, blue = images.histogram(quadrants(40, 20))
    assert (red[255], green[255], blue[255]) == (400, 400, 200)
    assert sum(red) == sum(green) == sum(blue) == 800


@pytest.mark.parametrize("data", [b"not an image at all", b"<html><body>hello</body></html>", b"\x00" * 64])
def test_data_that_is_no_image_raises_the_sdks_not_image_error(request_env, data):
    from google.appengine.api import images

    with pytest.raises(images.NotImageError):
        images.rotate(data, 90)


def test_a_truncated_image_raises_the_sdks_bad_image_error(request_env):
    from google.appengine.api import images

    data = encode(PILImage.effect_noise((200, 200), 64).convert("RGB"), "PNG")
    with pytest.raises(images.BadImageError):
        images.rotate(data[:len(data) // 2], 90)
    assert corners(images.horizontal_flip(quadrants())) == [GREEN, RED, YELLOW, BLUE]  # still serving


def test_an_image_over_the_pixel_limit_raises_the_sdks_large_image_error(request_env):
    from google.appengine.api import images

    huge = encode(PILImage.new("1", (10000, 6000)), "PNG")  # 60 megapixels, a few kilobytes
    with pytest.raises(images.LargeImageError):
        images.rotate(huge, 90)


def test_a_blob_key_names_no_image_in_kiln(request_env):
    from google.appengine.api import images

    image = images.Image(blob_key="some-blob")
    image.rotate(90)
    with pytest.raises(images.InvalidBlobKeyError):
        image.execute_transforms()


def test_serving_urls_of_an_images_service_without_a_blobstore_name_no_blob(request_env):
    # This session's images_svc runs without --blobstore-addr (test_images_serving_app.py has one that has it).
    from google.appengine.api import images

    with pytest.raises(images.InvalidBlobKeyError):
        images.get_serving_url("some-blob")
    with pytest.raises(images.InvalidBlobKeyError):
        images.delete_serving_url("some-blob")
