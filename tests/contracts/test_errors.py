from busgate.contracts import errors
from busgate.contracts.wire import Error


def test_each_error_knows_its_status():
    expected = {
        errors.BadRequest: 400,
        errors.Unauthorized: 401,
        errors.Forbidden: 403,
        errors.NotFound: 404,
        errors.PayloadTooLarge: 413,
        errors.MessageTooLarge: 413,
        errors.UnsupportedMediaType: 415,
        errors.RateLimited: 429,
        errors.UpstreamError: 502,
        errors.UpstreamUnreachable: 502,
        errors.ReplyTooLarge: 502,
        errors.NoResponders: 503,
        errors.BusUnavailable: 503,
        errors.DeadlineExceeded: 504,
    }
    for cls, status in expected.items():
        exc = cls("m")
        assert exc.status == status
        assert exc.to_wire().status == status


def test_deadline_is_also_a_timeout_error():
    assert isinstance(errors.DeadlineExceeded("late"), TimeoutError)


def test_remote_error_keeps_what_the_adapter_said():
    remote = errors.Remote(Error(code="x_code", message="said so", status=418, retryable=True))
    assert (remote.status, remote.code, remote.message, remote.retryable) == (
        418,
        "x_code",
        "said so",
        True,
    )
