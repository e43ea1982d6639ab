"""kiln.sdk's urlfetch, mail, images and app_identity_service: how the SDK's messages become kiln's and back, and the
answers that need no kiln service (app identity, serving URLs). No sockets: the calls that reach kiln's services are
tested against real ones in tests/integration/test_sdk_services.py."""

from __future__ import annotations

import pytest

APP = "unit-app"
TICKET = "HTTP_X_APPENGINE_API_TICKET"


@pytest.fixture(scope="module")
def sdk(gae_sdk):
    from kiln.sdk import proxy

    return proxy.install(APP)


@pytest.fixture
def environ(sdk, monkeypatch):
    """A request of the app: its environment, with an open ticket."""
    from kiln.sdk import tickets

    env = {"DEFAULT_VERSION_HOSTNAME": f"{APP}.apps.example.test"}
    minted = tickets.open_ticket(APP, env)
    monkeypatch.setenv(TICKET, minted)
    yield env
    tickets.close(minted)


def context(deadline=None, **environ):
    from kiln.sdk.service import CallContext

    return CallContext(app_id=APP, deadline=deadline, environ=environ)


# --- registration ------------------------------------------------------------------------------------------------

def test_the_proxy_serves_urlfetch_mail_images_and_app_identity(sdk):
    assert {"urlfetch", "mail", "images", "app_identity_service"} <= set(sdk.services)


def test_installing_for_another_app_replaces_every_stub_the_default_too(gae_sdk):
    from google.appengine.api import apiproxy_stub_map

    from kiln.sdk import proxy

    stubmap = apiproxy_stub_map.APIProxyStubMap()
    proxy.install("first-app", [], stubmap)
    second = proxy.install("second-app", [], stubmap)
    assert stubmap.GetStub("urlfetch").proxy is second
    assert stubmap.GetStub("no_such_service").proxy is second


# --- urlfetch ----------------------------------------------------------------------------------------------------

def fetch_request(**fields):
    from google.appengine.api import urlfetch_service_pb2 as gae

    return gae.URLFetchRequest(Method=gae.URLFetchRequest.GET, Url="http://example.test/a", **fields)


@pytest.mark.parametrize("inner, call_deadline, expected", [
    (None, None, 5.0),       # App Engine's default
    (7.0, None, 7.0),        # the SDK's fetch(deadline=7)
    (0.5, None, 0.5),
    (600.0, None, 60.0),     # at most 60 s
    (30.0, 12.0, 12.0),      # never past the request's own deadline
    (None, 3.0, 3.0),
])
def test_the_fetch_deadline_is_the_requests_else_five_seconds_bounded(gae_sdk, inner, call_deadline, expected):
    from kiln.sdk import urlfetch

    request = fetch_request(**({} if inner is None else {"Deadline": inner}))
    assert urlfetch.fetch_deadline(request, context(call_deadline)) == expected


def test_every_field_of_the_sdks_fetch_request_reaches_kilns(gae_sdk):
    from google.appengine.api import urlfetch_service_pb2 as gae

    from kiln.pb.urlfetch.v1 import urlfetch_pb2 as pb
    from kiln.sdk import urlfetch

    request = gae.URLFetchRequest(Method=gae.URLFetchRequest.PATCH, Url="https://example.test/x?y=1",
                                  Payload=b"\x00body", FollowRedirects=False, Deadline=9.0,
                                  MustValidateServerCertificate=False)
    request.header.add(Key="X-One", Value="1")
    request.header.add(Key="X-One", Value="2")
    out, deadline = urlfetch.translate_request(request, context())
    assert deadline == 9.0
    assert out == pb.FetchRequest(method=pb.METHOD_PATCH, url="https://example.test/x?y=1", payload=b"\x00body",
                                  follow_redirects=False, deadline_seconds=9.0, validate_certificate=False,
                                  allow_truncated=True,
                                  headers=[pb.Header(name="X-One", value="1"), pb.Header(name="X-One", value="2")])


def test_certificates_are_validated_and_redirects_followed_unless_the_sdk_says_otherwise(gae_sdk):
    from kiln.sdk import urlfetch

    out, _ = urlfetch.translate_request(fetch_request(), context())
    assert (out.validate_certificate, out.follow_redirects) == (True, True)


def test_a_payload_over_ten_megabytes_is_refused_with_urlfetchs_code_before_any_call(gae_sdk):
    from google.appengine.api import urlfetch_service_pb2 as gae
    from google.appengine.runtime import apiproxy_errors

    from kiln.sdk import urlfetch

    request = fetch_request(Payload=b"x" * (10 * 1024 * 1024 + 1))
    with pytest.raises(apiproxy_errors.ApplicationError) as caught:
        urlfetch.translate_request(request, context())
    assert caught.value.application_error == gae.URLFetchServiceError.PAYLOAD_TOO_LARGE


@pytest.mark.parametrize("final_url, expected", [
    ("http://example.test/a", ""),  # no redirect: App Engine left it empty (the SDK reads None)
    ("http://example.test/b", "http://example.test/b"),
    ("", ""),
])
def test_the_final_url_is_named_only_when_redirects_led_elsewhere(gae_sdk, final_url, expected):
    from google.appengine.api import urlfetch_service_pb2 as gae

    from kiln.pb.urlfetch.v1 import urlfetch_pb2 as pb
    from kiln.sdk import urlfetch

    response = gae.URLFetchResponse()
    urlfetch.translate_response(pb.FetchResponse(status_code=200, final_url=final_url), "http://example.test/a",
                                response)
    assert response.FinalUrl == expected


def test_the_response_keeps_every_header_its_status_content_and_truncation(gae_sdk):
    from google.appengine.api import urlfetch_service_pb2 as gae

    from kiln.pb.urlfetch.v1 import urlfetch_pb2 as pb
    from kiln.sdk import urlfetch

    reply = pb.FetchResponse(status_code=404, content=b"\xffmissing", content_was_truncated=True,
                             headers=[pb.Header(name="Set-Cookie", value="a=1"),
                                      pb.Header(name="Set-Cookie", value="b=2")])
    response = gae.URLFetchResponse()
    urlfetch.translate_response(reply, "http://example.test/a", response)
    assert (response.StatusCode, response.Content, response.ContentWasTruncated) == (404, b"\xffmissing", True)
    assert [(h.Key, h.Value) for h in response.header] == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]


@pytest.mark.parametrize("code, exception", [
    ("INVALID_URL", "InvalidURLError"), ("FETCH_ERROR", "DownloadError"),
    ("DEADLINE_EXCEEDED", "DeadlineExceededError"), ("SSL_CERTIFICATE_ERROR", "SSLCertificateError"),
    ("DNS_ERROR", "DNSLookupFailedError"), ("CLOSED", "ConnectionClosedError"),
    ("TOO_MANY_REDIRECTS", "TooManyRedirectsError"), ("MALFORMED_REPLY", "MalformedReplyError"),
    ("CONNECTION_ERROR", "DownloadError"), ("PAYLOAD_TOO_LARGE", "PayloadTooLargeError"),
    ("RESPONSE_TOO_LARGE", "ResponseTooLargeError"), ("FORBIDDEN_DESTINATION", "DownloadError"),
])
def test_each_code_of_kilns_url_fetch_service_is_the_sdks_own_exception(gae_sdk, code, exception):
    from google.appengine.api import urlfetch as sdk_urlfetch

    from kiln.sdk import urlfetch

    error = urlfetch._ERRORS.codes[code]("the detail")
    found = _sdk_fetch_error(error)
    assert type(found).__name__ == exception and isinstance(found, getattr(sdk_urlfetch, exception))


def _sdk_fetch_error(error):
    """What the SDK's urlfetch raises for ``error`` from its call (its own result hook, run on a finished RPC)."""
    from google.appengine.api import urlfetch as sdk_urlfetch
    from google.appengine.api import urlfetch_service_pb2 as gae

    class Finished:
        service, method = "urlfetch", "Fetch"
        request = gae.URLFetchRequest(Url="http://example.test/")

        def check_success(self):
            raise error

    try:
        sdk_urlfetch._get_fetch_result(Finished())
    except Exception as exc:  # noqa: BLE001 - the test looks at which
        return exc
    raise AssertionError("no error raised")


# --- mail --------------------------------------------------------------------------------------------------------

def test_every_field_of_the_sdks_mail_message_reaches_kilns(gae_sdk):
    from google.appengine.api import mail

    from kiln.pb.mail.v1 import mail_pb2 as pb
    from kiln.sdk import mail as kiln_mail

    message = mail.EmailMessage(
        sender="Robot <robot@unit-app.mail.localhost>", to=["a@example.org", "B <b@example.org>"], cc="c@example.org",
        bcc="d@example.org", reply_to="r@example.org", subject="Grüße", body="text", html="<p>html</p>",
        amp_html="<html amp4email></html>", headers={"List-Id": "<list.example.org>"},
        attachments=[mail.Attachment("a.txt", b"one"), mail.Attachment("logo.png", b"\x89PNG", content_id="<logo>")])
    assert kiln_mail.translate(message.ToProto()) == pb.MailMessage(
        sender="Robot <robot@unit-app.mail.localhost>", to=["a@example.org", "B <b@example.org>"],
        cc=["c@example.org"], bcc=["d@example.org"], reply_to="r@example.org", subject="Grüße", text_body="text",
        html_body="<p>html</p>", amp_html_body="<html amp4email></html>",
        headers=[pb.Header(name="List-Id", value="<list.example.org>")],
        attachments=[pb.Attachment(file_name="a.txt", data=b"one"),
                     pb.Attachment(file_name="logo.png", data=b"\x89PNG", content_id="<logo>")])


@pytest.mark.parametrize("code, exception", [
    ("UNAUTHORIZED_SENDER", "InvalidSenderError"), ("INVALID_ATTACHMENT_TYPE", "InvalidAttachmentTypeError"),
    ("INVALID_HEADER_NAME", "InvalidHeaderNameError"), ("BAD_REQUEST", "BadRequestError"),
    ("MISSING_RECIPIENTS", "BadRequestError"), ("INVALID_EMAIL", "BadRequestError"),
])
def test_each_code_of_kilns_mail_service_is_the_sdks_own_exception(gae_sdk, code, exception):
    from google.appengine.api import mail

    from kiln.sdk import mail as kiln_mail

    error = kiln_mail._ERRORS.codes[code]("the detail")
    assert mail.ERROR_MAP[error.application_error] is getattr(mail, exception)
    assert error.error_detail == "the detail"


# --- images ------------------------------------------------------------------------------------------------------

PNG_1X1 = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                        "1f15c4890000000d49444154789c6360000002000154a24f5f0000000049454e44ae426082")


def queued(build):
    """The transforms the SDK's ``Image`` queues for ``build(image)``, translated to kiln's."""
    from google.appengine.api import images

    from kiln.sdk import images as kiln_images

    image = images.Image(PNG_1X1)
    build(image)
    return [kiln_images.transform(t) for t in image._transforms]


def test_each_of_the_sdks_transforms_becomes_kilns(gae_sdk):
    from kiln.pb.images.v1 import images_pb2 as pb

    assert queued(lambda i: i.resize(width=20)) == [pb.Transform(
        width=20, height=0, crop_to_fit=False, crop_offset_x=0.5, crop_offset_y=0.5, allow_stretch=False)]
    assert queued(lambda i: i.resize(30, 10, crop_to_fit=True, crop_offset_x=0.0, crop_offset_y=1.0)) == [
        pb.Transform(width=30, height=10, crop_to_fit=True, crop_offset_x=0.0, crop_offset_y=1.0, allow_stretch=False)]
    assert queued(lambda i: i.resize(30, 10, allow_stretch=True))[0].allow_stretch is True
    assert queued(lambda i: i.rotate(-90)) == [pb.Transform(rotate=270)]  # the SDK turns -90 into 270
    assert queued(lambda i: i.horizontal_flip()) == [pb.Transform(horizontal_flip=True)]
    assert queued(lambda i: i.vertical_flip()) == [pb.Transform(vertical_flip=True)]
    assert queued(lambda i: i.crop(0.25, 0.0, 1.0, 0.5)) == [
        pb.Transform(crop_left_x=0.25, crop_top_y=0.0, crop_right_x=1.0, crop_bottom_y=0.5)]
    assert queued(lambda i: i.im_feeling_lucky()) == [pb.Transform(autolevels=True)]


def test_a_transform_request_carries_output_quality_orientation_metadata_and_substitution(gae_sdk):
    from google.appengine.api.images import images_service_pb2 as gae

    from kiln.pb.images.v1 import images_pb2 as pb
    from kiln.sdk import images as kiln_images

    request = gae.ImagesTransformRequest(image=gae.ImageData(content=PNG_1X1),
                                         output=gae.OutputSettings(mime_type=gae.OutputSettings.WEBP, quality=40))
    request.transform.add(rotate=90)
    request.input.correct_exif_orientation = gae.InputSettings.CORRECT_ORIENTATION
    request.input.parse_metadata = True
    request.input.transparent_substitution_rgb = -1  # 0xFFFFFFFF as the SDK's int32 carries it
    assert kiln_images.transform_request(request) == pb.TransformRequest(
        image=pb.ImageData(content=PNG_1X1), transforms=[pb.Transform(rotate=90)],
        output=pb.OutputSettings(format=pb.FORMAT_WEBP, quality=40), correct_orientation=True,
        parse_metadata=True, transparent_substitution_rgb=0xFFFFFFFF)


def test_the_transform_response_gives_the_sdk_the_results_size(gae_sdk):
    from google.appengine.api.images import images_service_pb2 as gae

    from kiln.pb.images.v1 import images_pb2 as pb
    from kiln.sdk import images as kiln_images

    response = gae.ImagesTransformResponse()
    kiln_images.transform_response(pb.TransformResponse(image=pb.ImageData(content=b"out"), width=3, height=4,
                                                        source_metadata='{"ImageWidth": 1}'), response)
    assert (response.image.content, response.image.width, response.image.height) == (b"out", 3, 4)
    assert response.source_metadata == '{"ImageWidth": 1}'


@pytest.mark.parametrize("anchor, expected", [(0, 1), (4, 5), (8, 9)])  # TOP_LEFT, CENTER, BOTTOM_RIGHT
def test_a_composite_request_carries_the_canvas_and_each_layer(gae_sdk, anchor, expected):
    from google.appengine.api.images import images_service_pb2 as gae

    from kiln.pb.images.v1 import images_pb2 as pb
    from kiln.sdk import images as kiln_images

    request = gae.ImagesCompositeRequest(canvas=gae.ImagesCanvas(
        width=30, height=20, color=-16711936, output=gae.OutputSettings(mime_type=gae.OutputSettings.JPEG)))
    request.image.add(content=PNG_1X1)
    request.options.add(source_index=0, x_offset=-3, y_offset=4, opacity=0.5, anchor=anchor)
    assert kiln_images.composite_request(request) == pb.CompositeRequest(
        images=[pb.ImageData(content=PNG_1X1)], width=30, height=20, color=0xFF00FF00,
        output=pb.OutputSettings(format=pb.FORMAT_JPEG),
        layers=[pb.CompositeLayer(source_index=0, x_offset=-3, y_offset=4, opacity=0.5, anchor=expected)])


@pytest.mark.parametrize("code, exception", [
    ("NOT_IMAGE", "NotImageError"), ("BAD_IMAGE_DATA", "BadImageError"), ("IMAGE_TOO_LARGE", "LargeImageError"),
    ("BAD_TRANSFORM_DATA", "BadRequestError"), ("INVALID_BLOB_KEY", "InvalidBlobKeyError"),
    ("ACCESS_DENIED", "AccessDeniedError"), ("OBJECT_NOT_FOUND", "ObjectNotFoundError"),
    ("UNSPECIFIED", "TransformationError"),
])
def test_each_code_of_kilns_images_service_is_the_sdks_own_exception(gae_sdk, code, exception):
    from google.appengine.api import images

    from kiln.sdk import images as kiln_images

    found = images._ToImagesError(kiln_images._ERRORS.codes[code]("the detail"))
    assert type(found) is getattr(images, exception)


# --- app_identity ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hostname, expected", [
    ("unit-app.apps.example.test", "unit-app@apps.example.test"),
    ("unit-app.apps.example.test:8080", "unit-app@apps.example.test"),
    ("localhost:43123", "unit-app@localhost"),
    ("[::1]:8080", "unit-app@[::1]"),
    ("", "unit-app@localhost"),
])
def test_the_service_account_is_the_app_at_the_deployments_domain(gae_sdk, hostname, expected):
    from kiln.sdk import app_identity

    assert app_identity.service_account_name(context(DEFAULT_VERSION_HOSTNAME=hostname)) == expected


def test_the_sdks_get_service_account_name_answers_through_the_proxy(environ):
    from google.appengine.api import app_identity

    assert app_identity.get_service_account_name() == "unit-app@apps.example.test"


def test_the_default_bucket_fails_with_feature_not_enabled_naming_cloud_storage(environ):
    from google.appengine.api import app_identity
    from google.appengine.runtime import apiproxy_errors

    with pytest.raises(apiproxy_errors.FeatureNotEnabledError, match="Cloud Storage"):
        app_identity.get_default_gcs_bucket_name()


@pytest.mark.parametrize("field", [{"service_account_id": 7}, {"service_account_name": "other@example.test"}])
def test_an_access_token_for_another_service_account_is_not_allowed(environ, field):
    from google.appengine.api import apiproxy_stub_map
    from google.appengine.api.app_identity import app_identity_service_pb2 as gae
    from google.appengine.runtime import apiproxy_errors

    with pytest.raises(apiproxy_errors.ApplicationError) as caught:
        apiproxy_stub_map.MakeSyncCall("app_identity_service", "GetAccessToken",
                                       gae.GetAccessTokenRequest(scope=["email"], **field),
                                       gae.GetAccessTokenResponse())
    assert caught.value.application_error == gae.AppIdentityServiceError.NOT_ALLOWED


def test_an_unknown_app_identity_method_is_call_not_found(environ):
    from google.appengine.api import apiproxy_stub_map
    from google.appengine.api.app_identity import app_identity_service_pb2 as gae
    from google.appengine.runtime import apiproxy_errors

    with pytest.raises(apiproxy_errors.CallNotFoundError):
        apiproxy_stub_map.MakeSyncCall("app_identity_service", "Frobnicate", gae.GetServiceAccountNameRequest(),
                                       gae.GetServiceAccountNameResponse())
