"""DICOMweb in and out: a study or series URL as an input, the DICOM SEG + SR stored back with STOW-RS.

Input URLs (:func:`parse_url`)::

    http(s)://HOST[:PORT]/PREFIX/studies/<StudyInstanceUID>[/series/<SeriesInstanceUID>]

``PREFIX`` is the server's DICOMweb root (``dicom-web`` on Orthanc). A study URL reads the study's
image series as a DICOM folder does (the one with the most instances unless ``series_uid`` names
one); series whose modality is not an image (SEG, SR, PR, KO, RTSTRUCT, ...: :data:`NOT_IMAGES`,
e.g. the results of an earlier push) are not even retrieved. The instances are retrieved with
WADO-RS (QIDO-RS first, to check that the study or series exists and what it is) through
``dicomweb-client``, into a temporary folder that lives as long as the
:class:`~scripts.inference.study.Study` and is removed with it; the Predictor removes it as soon
as a study is done, whether it succeeded or not. Messages name the URL, never the temporary folder.

Output (:func:`push_instances`): the files are stored in one STOW-RS request to a DICOMweb root
(``http://HOST/dicom-web``). The push succeeds only when the server reports every instance stored
and a QIDO-RS query then finds each of them (some servers answer "stored" for an instance a filter
dropped); when one is missing (or the server answers an error), :class:`DicomWebError` says which
were stored and which not, so a study is never reported done with half of its objects on the server.

Authentication and network settings come from the environment, never from the command line
(:data:`ENV_TOKEN` / :data:`ENV_USER` + :data:`ENV_PASSWORD`, :data:`ENV_TIMEOUT`,
:data:`ENV_RETRIES`): a bearer token or HTTP basic auth; a timeout per request (seconds); retries of
connection failures and of answers 429 / 502 / 503 / 504 with exponential back-off. An HTTP error
names the URL and the status (401 / 403 with a hint at the variables).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from scripts.inference.errors import InputError

ENV_TOKEN = "MTUNET_DICOMWEB_TOKEN"  # bearer token
ENV_USER = "MTUNET_DICOMWEB_USER"  # HTTP basic auth, with ENV_PASSWORD
ENV_PASSWORD = "MTUNET_DICOMWEB_PASSWORD"
ENV_TIMEOUT = "MTUNET_DICOMWEB_TIMEOUT"  # seconds per request (connect and each read), default DEFAULT_TIMEOUT
ENV_RETRIES = "MTUNET_DICOMWEB_RETRIES"  # further tries after a failure that may pass, default DEFAULT_RETRIES
ENV_VARS = (ENV_TOKEN, ENV_USER, ENV_PASSWORD, ENV_TIMEOUT, ENV_RETRIES)
DEFAULT_TIMEOUT, DEFAULT_RETRIES = 60.0, 3
BACKOFF_S = 0.5  # waits between tries: 2 * BACKOFF_S, then doubled each time
RETRY_STATUS = (HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.BAD_GATEWAY,
                HTTPStatus.SERVICE_UNAVAILABLE, HTTPStatus.GATEWAY_TIMEOUT)
#: modalities of series that hold no image to segment (derived objects, reports, presentation states)
NOT_IMAGES = frozenset({"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTRECORD", "REG", "DOC", "FID", "PLAN",
                        "ANN", "RWV"})
_UID = r"[0-9]+(?:\.[0-9]+)*"
_PATH = re.compile(rf"^(?P<root>.*?)/studies/(?P<study>{_UID})(?:/series/(?P<series>{_UID}))?/?$")


class DicomWebError(InputError):
    """A DICOMweb server or URL that cannot be used; the message starts with the URL."""


def is_url(item: object) -> bool:
    """Whether an input is a web address (``http://`` or ``https://``) rather than a path."""
    return isinstance(item, str) and item.lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class StudyRef:
    """A parsed study or series URL: the DICOMweb root and the UIDs."""

    url: str
    root: str
    study_uid: str
    series_uid: str | None = None


def parse_url(url: str) -> StudyRef:
    """Split a study or series URL (see the module docstring).

    Raises:
        DicomWebError: not ``http(s)://HOST/.../studies/<UID>[/series/<UID>]``.
    """
    parts = urlparse(url)
    match = _PATH.match(parts.path) if parts.scheme in ("http", "https") and parts.netloc else None
    if match is None or parts.query or parts.fragment:
        raise DicomWebError(f"{url}: not a DICOMweb study or series URL; expected "
                            "http(s)://HOST/DICOMWEB-ROOT/studies/<StudyInstanceUID>[/series/<SeriesInstanceUID>]")
    root = f"{parts.scheme}://{parts.netloc}{match['root']}"
    return StudyRef(url, root, match["study"], match["series"])


class DicomWebUrl(str):
    """A study or series URL where the batch code expects a path: ``str()`` is the URL, ``name`` the
    UID it ends in (the output files' stem), ``parent`` the study (for a series) or the host."""

    @property
    def ref(self) -> StudyRef:
        return parse_url(str(self))

    @property
    def name(self) -> str:
        ref = self.ref
        return ref.series_uid or ref.study_uid

    @property
    def parent(self):
        ref = self.ref
        if ref.series_uid:
            return DicomWebUrl(f"{ref.root}/studies/{ref.study_uid}")
        return PurePosixPath(urlparse(ref.root).netloc.replace(":", "_"))


# ---------------------------------------------------------------------------------------------------- client


@dataclass(frozen=True)
class Connection:
    """How to reach a server: credentials, timeout and retries, read from the environment."""

    token: str | None = None
    user: str | None = None
    password: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES

    @classmethod
    def from_env(cls, env: os._Environ | dict | None = None) -> Connection:
        """Raises: DicomWebError: both a token and a user, a user without a password (or the reverse),
        a timeout or a retry count that is not a number."""
        env = os.environ if env is None else env
        token, user, password = (env.get(k) or None for k in (ENV_TOKEN, ENV_USER, ENV_PASSWORD))
        if token and (user or password):
            raise DicomWebError(f"{ENV_TOKEN} and {ENV_USER}/{ENV_PASSWORD} are both set: use a bearer token "
                                "or basic auth, not both")
        if bool(user) != bool(password):
            raise DicomWebError(f"basic auth needs both {ENV_USER} and {ENV_PASSWORD}; only "
                                f"{ENV_USER if user else ENV_PASSWORD} is set")
        try:
            timeout = float(env.get(ENV_TIMEOUT) or DEFAULT_TIMEOUT)
            retries = int(env.get(ENV_RETRIES) or DEFAULT_RETRIES)
        except ValueError as e:
            raise DicomWebError(f"{ENV_TIMEOUT} / {ENV_RETRIES} must be numbers ({e})") from e
        if timeout <= 0 or retries < 0:
            raise DicomWebError(f"{ENV_TIMEOUT} must be > 0 and {ENV_RETRIES} >= 0 (got {timeout}, {retries})")
        return cls(token, user, password, timeout, retries)

    @property
    def auth_hint(self) -> str:
        if self.token:
            return f"the bearer token in {ENV_TOKEN} was refused"
        if self.user:
            return f"the user / password in {ENV_USER} / {ENV_PASSWORD} were refused"
        return f"the server wants credentials: set {ENV_TOKEN}, or {ENV_USER} and {ENV_PASSWORD}"


def make_client(root: str, connection: Connection | None = None):
    """A ``dicomweb_client.DICOMwebClient`` for a DICOMweb root with the connection's credentials and
    timeout; the client retries connection failures, timeouts and the answers of :data:`RETRY_STATUS`
    ``retries`` times, waiting 1, 2, 4, ... s (its own ``retrying`` loop; the session does not retry)."""
    import requests
    from dicomweb_client import DICOMwebClient

    conn = connection or Connection.from_env()
    session = requests.Session()
    headers = {}
    if conn.token:
        headers["Authorization"] = f"Bearer {conn.token}"
    elif conn.user:
        session.auth = (conn.user, conn.password)
    client = DICOMwebClient(root, session=session, headers=headers, timeout=conn.timeout)
    client.set_http_retry_params(retry=True, max_attempts=conn.retries + 1,
                                 wait_exponential_multiplier=int(BACKOFF_S * 1000),
                                 retriable_error_codes=RETRY_STATUS)
    client.connection = conn
    return client


@contextmanager
def http_errors(url: str, what: str, connection: Connection) -> Iterator[None]:
    """Turn the HTTP client's exceptions into a :class:`DicomWebError` that names ``url``, what was
    being done and the HTTP status (or the connection problem)."""
    import requests
    from retrying import RetryError

    try:
        yield
    except RetryError as e:  # the last of the retries still answered a retryable status
        response = e.last_attempt.value
        response = response[1] if isinstance(response, tuple) else response
        raise DicomWebError(f"{url}: {what}: {_status(response, connection)} "
                            f"(after {connection.retries + 1} tries)") from None
    except requests.HTTPError as e:
        raise DicomWebError(f"{url}: {what}: {_status(e.response, connection)}") from None
    except requests.Timeout:
        raise DicomWebError(f"{url}: {what}: no answer within {connection.timeout:g} s "
                            f"(after {connection.retries + 1} tries; {ENV_TIMEOUT} sets the limit)") from None
    except requests.ConnectionError as e:
        raise DicomWebError(f"{url}: {what}: cannot connect to the server (after {connection.retries + 1} "
                            f"tries): {_reason(e)}") from None
    except requests.RequestException as e:
        raise DicomWebError(f"{url}: {what}: {type(e).__name__}: {e}") from None


def _status(response, connection: Connection) -> str:
    code = getattr(response, "status_code", None)
    try:
        phrase = HTTPStatus(code).phrase
    except (ValueError, TypeError):
        phrase = getattr(response, "reason", "") or ""
    text = f"the server answered HTTP {code} {phrase}".rstrip()
    if code in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
        text += f"; {connection.auth_hint}"
    return text


def _reason(error: BaseException) -> str:
    """The innermost cause of a connection error, in one short line (``Connection refused``)."""
    for _ in range(20):  # exception chains end; a cycle should not hang the message
        inner = error.__cause__ or error.__context__
        if inner is None:
            break
        error = inner
    text = str(error)
    m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    return m.group(1).strip() if m else (text.splitlines() or [type(error).__name__])[0][:200]


# ---------------------------------------------------------------------------------------------------- input


def _value(item: dict, tag: str) -> str | None:
    """One value of a DICOM JSON attribute (QIDO answers), or None."""
    values = (item.get(tag) or {}).get("Value") or [None]
    return None if values[0] is None else str(values[0])


SERIES_UID_TAG, MODALITY_TAG, INSTANCES_TAG = "0020000E", "00080060", "00201209"


def image_series(ref: StudyRef, client, series_uid: str | None = None) -> list[str]:
    """The UIDs of the series to retrieve for ``ref`` (see the module docstring).

    Raises:
        DicomWebError: no such study or series on the server, or nothing but non-image series.
    """
    wanted = ref.series_uid or series_uid
    with http_errors(ref.url, "QIDO-RS search for the study's series", client.connection):
        found = client.search_for_series(study_instance_uid=ref.study_uid, get_remaining=True,
                                         fields=["Modality", "NumberOfSeriesRelatedInstances"])
    series = {_value(s, SERIES_UID_TAG): (_value(s, MODALITY_TAG) or "?") for s in found}
    if not series:
        raise DicomWebError(f"{ref.url}: no study {ref.study_uid} on the server")
    listing = ", ".join(f"{uid} ({modality})" for uid, modality in sorted(series.items()))
    if wanted is not None:
        if wanted not in series:
            raise DicomWebError(f"{ref.url}: no series {wanted} in study {ref.study_uid} on the server; found {listing}")
        if series[wanted].upper() in NOT_IMAGES:
            raise DicomWebError(f"{ref.url}: series {wanted} is a {series[wanted]} series, not an image series; "
                                "give an image series or its study")
        return [wanted]
    images = [uid for uid, modality in sorted(series.items()) if modality.upper() not in NOT_IMAGES]
    if not images:
        raise DicomWebError(f"{ref.url}: study {ref.study_uid} holds no image series (found {listing})")
    return images


def retrieve(ref: StudyRef, dest: Path, series_uid: str | None = None, connection: Connection | None = None) -> int:
    """Retrieve the instances of ``ref``'s image series into ``dest/<SeriesInstanceUID>/``, one file
    each, as the server sends them (streamed, one instance in memory at a time); return their count.

    Raises:
        DicomWebError: see :func:`image_series`; an HTTP or connection error; an empty series.
    """
    client = make_client(ref.root, connection)
    count = 0
    for uid in image_series(ref, client, series_uid):
        folder = dest / uid
        folder.mkdir(parents=True)
        n = 0
        with http_errors(ref.url, f"WADO-RS retrieve of series {uid}", client.connection):
            for n, ds in enumerate(client.iter_series(ref.study_uid, uid), start=1):
                ds.save_as(folder / f"{n:05d}.dcm", enforce_file_format=False)
        if n == 0:
            raise DicomWebError(f"{ref.url}: the server sent no instance of series {uid}")
        count += n
    return count


def read_url(url: str, series_uid: str | None = None):
    """The study behind a study or series URL, as a :class:`~scripts.inference.study.Study` named
    after the UID the URL ends in; the retrieved files live in a temporary folder removed with it.

    Raises:
        DicomWebError: a bad URL, credentials, server or study (see :func:`retrieve`); InputError: no
            usable image series among the files (the rules of :mod:`scripts.inference.dicom`), naming the URL.
    """
    from scripts.inference.archive import read_filled_folder

    ref = parse_url(url)
    connection = Connection.from_env()
    target = DicomWebUrl(url)
    study = read_filled_folder(lambda root: retrieve(ref, root, series_uid, connection), target.name, url,
                               "mtunet-dicomweb-", series_uid)
    study.path, study.name = target, target.name
    return study


# ---------------------------------------------------------------------------------------------------- output


def check_root(url: str) -> str:
    """A DICOMweb root to push to (``http(s)://HOST[:PORT]/PREFIX``), without a trailing slash.

    Raises:
        DicomWebError: not an http(s) URL, or a study URL instead of a root.
    """
    parts = urlparse(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or "/studies" in parts.path:
        raise DicomWebError(f"{url}: not a DICOMweb root to push to; expected http(s)://HOST/DICOMWEB-ROOT "
                            "(e.g. http://pacs:8042/dicom-web)")
    return url.rstrip("/")


def push_instances(root: str, files: Sequence[str | os.PathLike], connection: Connection | None = None) -> list[str]:
    """Store ``files`` (DICOM instances of one study) with one STOW-RS request; return their SOP
    Instance UIDs.

    Raises:
        DicomWebError: the request failed (names the root and the HTTP status), or the server did not
            store every instance (names those stored and those refused, with the server's reason).
    """
    import pydicom

    client = make_client(check_root(root), connection)
    datasets = [pydicom.dcmread(f) for f in files]
    kinds = {str(ds.SOPInstanceUID): f"{ds.get('Modality', '?')} {ds.SOPInstanceUID}" for ds in datasets}
    with http_errors(root, "STOW-RS store", client.connection):
        answer = client.store_instances(datasets)
    stored = {str(item.ReferencedSOPInstanceUID) for item in answer.get("ReferencedSOPSequence", [])
              if "ReferencedSOPInstanceUID" in item}
    refused = {str(item.get("ReferencedSOPInstanceUID", "?")): item.get("FailureReason", "?")
               for item in answer.get("FailedSOPSequence", [])}
    reasons = {uid: f"failure reason {refused.get(uid, 'not reported')}" for uid in kinds if uid not in stored}
    for ds in datasets:  # a server may answer "stored" for an instance it dropped (Orthanc: a filtered-out one)
        uid = str(ds.SOPInstanceUID)
        if uid in reasons:
            continue
        with http_errors(root, "QIDO-RS check of the stored instances", client.connection):
            found = client.search_for_instances(study_instance_uid=str(ds.StudyInstanceUID),
                                                search_filters={"SOPInstanceUID": uid})
        if not found:
            reasons[uid] = "answered as stored, but not found on the server afterwards"
    if reasons:
        why = "; ".join(f"{kinds[uid]} refused ({reason})" for uid, reason in reasons.items())
        kept = ", ".join(kinds[uid] for uid in kinds if uid not in reasons) or "nothing"
        raise DicomWebError(f"{root}: STOW-RS store incomplete: {why}; stored: {kept}. The study's push failed")
    return list(kinds)
