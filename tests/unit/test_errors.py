"""kiln.errors: the error table."""

import grpc

from kiln import errors


def test_subclass_without_entry_inherits_parent_code():
    class MyError(errors.NotFoundError):
        pass
    assert errors.code_for(MyError()).grpc == grpc.StatusCode.NOT_FOUND


def test_too_large_maps_to_http_413():
    assert errors.code_for(errors.TooLargeError()).http == 413


def test_unknown_exception_is_internal():
    assert errors.code_for(ValueError()) is errors.INTERNAL


def test_grpc_status_turns_back_into_typed_error():
    err = errors.from_grpc(grpc.StatusCode.INVALID_ARGUMENT, "bad key")
    assert isinstance(err, errors.BadRequestError)
    assert str(err) == "bad key"
