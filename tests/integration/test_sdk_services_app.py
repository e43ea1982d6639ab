"""A python27-style app on Google's SDK uses ``google.appengine.api.urlfetch``, ``mail``, ``images`` and
``app_identity`` under kiln dev, unmodified: through the router, NATS, the runtime (kiln's API proxy in the app's
process) and urlfetch_svc, mail_svc and images_svc; the standard library's HTTP client still goes through URL Fetch.
"""

from __future__ import annotations

import base64
import email
import email.policy
import io
import json
import textwrap
import urllib.parse

import pytest
from PIL import Image as PILImage

from tests.integration import webservers
from tests.integration.apps import fetch, running
from tests.integration.test_mail_app import request, sign_in, wait_outbox

pytestmark = pytest.mark.nats

MAIN = textwrap.dedent(r'''
    import base64, http.client, json, urllib.parse, urllib.request
    from google.appengine.api import app_identity, images, mail, urlfetch

    def error(exc):
        return {"error": type(exc).__name__, "message": str(exc)}

    def do_fetch(query):
        try:
            result = urlfetch.fetch(query["url"], deadline=float(query.get("deadline", 5)),
                                    follow_redirects=query.get("follow", "1") == "1")
        except urlfetch.Error as exc:
            return error(exc)
        return {"status": result.status_code, "content": result.content.decode("latin-1"),
                "final_url": result.final_url, "location": result.headers.get("Location")}

    def do_stdlib(query):
        if query["how"] == "urllib":
            with urllib.request.urlopen(query["url"]) as resp:
                return {"status": resp.status, "content": resp.read().decode()}
        parts = urllib.parse.urlsplit(query["url"])
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        conn.request("POST", parts.path, body=b"from http.client")
        resp = conn.getresponse()
        return {"status": resp.status, "content": resp.read().decode()}

    def do_mail(query, environ):
        try:
            if query["as"] == "app":
                mail.send_mail(sender="Robot <robot@sdkmail.mail.localhost>", to="friend@example.org",
                               subject="sdk mail", body="hello", html="<b>hello</b>",
                               attachments=[("notes.txt", b"some notes"), ("pixel.png", b"\x89PNG")])
            elif query["as"] == "user":
                mail.send_mail(sender=environ["USER_EMAIL"], to="friend@example.org", subject="sdk user mail",
                               body="hi")
            elif query["as"] == "stranger":
                mail.send_mail(sender="stranger@example.com", to="friend@example.org", subject="nope", body="x")
            elif query["as"] == "appspotmail":
                sender = "Sample <noreply@{}.appspotmail.com>".format(app_identity.get_application_id())
                mail.send_mail(sender=sender, to="friend@example.org", subject="sdk appspotmail", body="hi")
            elif query["as"] == "admins":
                mail.send_mail_to_admins(sender="robot@sdkmail.mail.localhost", subject="sdk admins", body="x")
        except mail.Error as exc:
            return error(exc)
        return {"sent": True}

    def do_images(action, data):
        try:
            if action == "resize":
                out = images.resize(data, width=20, output_encoding=images.JPEG, quality=90)
            elif action == "rotate":
                image = images.Image(data)
                image.rotate(90)
                image.horizontal_flip()
                out = image.execute_transforms(output_encoding=images.PNG)
                return {"image": base64.b64encode(out).decode(), "size": [image.width, image.height]}
            elif action == "composite":
                out = images.composite([(data, 0, 0, 1.0, images.BOTTOM_RIGHT)], 60, 60, color=0xFFFFFFFF)
            elif action == "histogram":
                return {"histogram": [list(counts) for counts in images.histogram(data)]}
            else:
                raise ValueError(action)
        except images.Error as exc:
            return error(exc)
        return {"image": base64.b64encode(out).decode()}

    def app(environ, start_response):
        query = dict(urllib.parse.parse_qsl(environ["QUERY_STRING"]))
        path = environ["PATH_INFO"]
        if path == "/fetch":
            body = do_fetch(query)
        elif path == "/self":
            try:
                urlfetch.fetch("http://" + environ["HTTP_HOST"] + "/self")
                body = {"error": None}
            except urlfetch.Error as exc:
                body = error(exc)
        elif path == "/stdlib":
            body = do_stdlib(query)
        elif path == "/mail":
            body = do_mail(query, environ)
        elif path.startswith("/images/"):
            data = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            body = do_images(path.rsplit("/", 1)[1], data)
        elif path == "/identity":
            body = {"account": app_identity.get_service_account_name(),
                    "app_id": app_identity.get_application_id()}
        else:
            body = {}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
''')

APP_YAML = "application: sdkmail\n" + ("runtime: python27\napi_version: 1\nthreadsafe: true\n"
                                       "handlers:\n- url: /.*\n  script: main.app\n")


@pytest.fixture(scope="module")
def web():
    with webservers.serving("127.0.0.2") as plain:
        yield plain.base


@pytest.fixture(scope="module")
def server(tmp_path_factory, web):
    with running(tmp_path_factory.mktemp("sdkservices"), {"main.py": MAIN}, app_yaml=APP_YAML,
                 urlfetch_allow_internal="127.0.0.2/32") as srv:
        yield srv


def get(server, path, data=None):
    status, _, body = fetch(server, path, data)
    assert status == 200, body
    return json.loads(body)


def fetched(server, url, **query):
    return get(server, "/fetch?" + urllib.parse.urlencode({"url": url, **query}))


# --- urlfetch ----------------------------------------------------------------------------------------------------

def test_the_sdks_urlfetch_fetches_a_local_server(server, web):
    found = fetched(server, web + "/")
    assert (found["status"], found["content"], found["final_url"]) == (200, "hello from 127.0.0.2", None)


def test_the_sdks_urlfetch_follows_redirects_and_names_the_final_url(server, web):
    found = fetched(server, web + "/redirect?to=/status?code=200")
    assert (found["status"], found["content"], found["final_url"]) == (200, "status 200", web + "/status?code=200")
    held = fetched(server, web + "/redirect?to=/elsewhere", follow="0")
    assert (held["status"], held["location"]) == (302, "/elsewhere")


def test_a_slow_server_past_the_deadline_raises_the_sdks_deadline_exceeded_error(server, web):
    assert fetched(server, web + "/slow?s=3", deadline="0.5")["error"] == "DeadlineExceededError"


@pytest.mark.parametrize("url", ["ftp://example.com/", "http://", "no scheme at all"])
def test_an_invalid_url_raises_the_sdks_invalid_url_error(server, url):
    assert fetched(server, url)["error"] == "InvalidURLError"


def test_a_loopback_destination_is_refused_by_kilns_policy_with_the_sdks_download_error(server, web):
    port = web.rsplit(":", 1)[1]
    assert fetched(server, f"http://127.0.0.1:{port}/")["error"] == "DownloadError"


def test_the_sdk_refuses_fetching_the_apps_own_url(server):
    assert get(server, "/self")["error"] == "InvalidURLError"


@pytest.mark.parametrize("how", ["urllib", "http.client"])
def test_the_standard_librarys_http_client_still_goes_through_url_fetch(server, web, how):
    found = get(server, "/stdlib?" + urllib.parse.urlencode({"url": web + "/echo", "how": how}))
    assert found["status"] == 200
    echoed = json.loads(found["content"])
    assert echoed["headers"]["User-Agent"].endswith(f"appid: {server.app_id})")  # added by URL Fetch
    assert echoed["body"] == ("" if how == "urllib" else "from http.client")


# --- mail --------------------------------------------------------------------------------------------------------

def test_the_sdks_mail_lands_in_the_dev_outbox_with_its_attachments(server):
    assert get(server, "/mail?as=app") == {"sent": True}
    [kept] = wait_outbox(server, "sdk mail")
    assert kept.envelope_from == "robot@sdkmail.mail.localhost" and list(kept.recipients) == ["friend@example.org"]
    message = email.message_from_bytes(kept.raw, policy=email.policy.default)
    assert message.get_body(("plain",)).get_content().strip() == "hello"
    assert message.get_body(("html",)).get_content().strip() == "<b>hello</b>"
    assert {a.get_filename(): a.get_payload(decode=True) for a in message.iter_attachments()} == {
        "notes.txt": b"some notes", "pixel.png": b"\x89PNG"}


def test_the_signed_in_user_may_send_as_themselves_through_the_sdk(server):
    cookie = sign_in(server, "visitor@example.net")
    status, _, body = request(server, "/mail?as=user", headers={"Cookie": cookie})
    assert (status, json.loads(body)) == (200, {"sent": True})
    [kept] = wait_outbox(server, "sdk user mail")
    assert kept.envelope_from == "visitor@example.net"


def test_app_engines_appspotmail_sender_is_sent_from_the_apps_mail_domain(server):
    assert get(server, "/mail?as=appspotmail") == {"sent": True}
    [kept] = wait_outbox(server, "sdk appspotmail")
    assert kept.envelope_from == "noreply@sdkmail.mail.localhost"


def test_an_unauthorized_sender_is_refused_with_the_sdks_invalid_sender_error(server):
    assert get(server, "/mail?as=stranger")["error"] == "InvalidSenderError"


# --- images ------------------------------------------------------------------------------------------------------

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


def quadrants(width=40, height=20):
    img = PILImage.new("RGB", (width, height))
    w, h = width // 2, height // 2
    for x, y, colour in ((0, 0, RED), (w, 0, GREEN), (0, h, BLUE), (w, h, YELLOW)):
        img.paste(colour, (x, y, x + w, y + h))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def image_of(found):
    return PILImage.open(io.BytesIO(base64.b64decode(found["image"])))


def test_the_sdks_resize_returns_a_smaller_jpeg(server):
    out = image_of(get(server, "/images/resize", quadrants(40, 20)))
    assert (out.format, out.size) == ("JPEG", (20, 10))


def test_the_sdks_transforms_run_in_order_and_the_image_knows_its_size(server):
    found = get(server, "/images/rotate", quadrants(40, 20))
    out = image_of(found).convert("RGB")
    assert found["size"] == [20, 40] and out.size == (20, 40)
    assert [out.getpixel(p) for p in ((1, 1), (18, 1), (1, 38), (18, 38))] == [RED, BLUE, GREEN, YELLOW]


def test_the_sdks_composite_anchors_the_image_on_the_canvas(server):
    out = image_of(get(server, "/images/composite", quadrants(40, 20))).convert("RGB")
    assert out.size == (60, 60)
    assert (out.getpixel((1, 1)), out.getpixel((58, 58)), out.getpixel((21, 41))) == ((255, 255, 255), YELLOW, RED)


def test_the_sdks_histogram_counts_each_colour(server):
    red, green, blue = get(server, "/images/histogram", quadrants(40, 20))["histogram"]
    assert (red[255], green[255], blue[255], sum(red)) == (400, 400, 200, 800)


@pytest.mark.parametrize("data", [b"plain text, no image", b"<svg></svg>"])
def test_data_that_is_no_image_raises_the_sdks_not_image_error(server, data):
    assert get(server, "/images/rotate", data)["error"] == "NotImageError"


# --- app_identity ------------------------------------------------------------------------------------------------

def test_the_sdks_app_identity_names_the_app_and_its_service_account(server):
    assert get(server, "/identity") == {"account": "sdkmail@localhost", "app_id": "sdkmail"}
