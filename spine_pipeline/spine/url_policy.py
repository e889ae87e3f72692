"""Which artifact URLs the pipeline may fetch: the origin and address rules (contracts 7).

An artifact URL comes from the API's answer (or from a redirect the artifact host sends), so
it is data, not a destination we chose. Fetched blindly it lets whoever controls that data
make the archiver read a loopback admin page, a private service or the cloud metadata
endpoint, and then archive the answer as evidence. The rules:

- `https` only, except the API's own origin (scheme + host + port, exactly; another port on
  the same host is another origin), which is fetched with whatever scheme it has.
- A host named in `SPINE_ARTIFACT_ALLOWED_HOSTS` (`host` or `host:port`) is trusted as the
  API's origin is: any scheme of http(s), any address. The operator names it on purpose, e.g.
  an in-cluster object store served over plain http.
- Every other host must resolve only to global unicast addresses: loopback, private,
  link-local, unique-local, CGNAT, multicast, reserved and cloud-metadata addresses are
  refused, before any connection is opened.

This module decides; it does no I/O. The client resolves the name, asks `pin` for the
checked address and connects to that address (time-of-check is time-of-use: a DNS answer
that changes between the check and the connection cannot redirect the request), and it
applies `screen` again to every redirect hop.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import httpx

from spine_pipeline.settings import split_host_port
from spine_pipeline.spine.errors import DownloadRefusedError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_DEFAULT_PORTS = {"http": 80, "https": 443}

#: Cloud metadata endpoints, named in messages; most also fall in a refused range anyway.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
    )
)

# Ranges `is_global` misses on some Python versions, or that carry an IPv4 address inside an
# IPv6 one (NAT64 reaches the embedded IPv4 address, so that one is checked too).
_EXTRA_REFUSED = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.0.0/24", "198.18.0.0/15", "64:ff9b:1::/48", "2001:db8::/32")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT


@dataclass(frozen=True)
class Origin:
    """Scheme + host + port, lower-cased, the port made explicit."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def origin_of(url: httpx.URL) -> Origin:
    scheme = url.scheme.lower()
    host = url.raw_host.decode("ascii").lower().rstrip(".")
    if ":" in host:  # an IPv6 literal, spelled one way (as the allow-list spells it)
        host = str(ipaddress.IPv6Address(host.split("%", 1)[0]))
    return Origin(scheme, host, url.port or _DEFAULT_PORTS.get(scheme, 0))


@dataclass(frozen=True)
class Screened:
    """A URL that passed the scheme/origin rules.

    `trusted`: the API's origin or an allow-listed host, fetched by name at any address.
    Otherwise `literal` is the host's address when the URL names one (already checked), and
    None when the name must be resolved and the answer checked with `pin`.
    """

    url: httpx.URL
    origin: Origin
    trusted: bool
    literal: IPAddress | None = None

    @property
    def needs_resolution(self) -> bool:
        return not self.trusted and self.literal is None


def address_problem(address: IPAddress) -> str | None:
    """Why an address is not a public destination (None: it is one)."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            inner = address_problem(embedded)
            return f"{inner} (embedded in {address})" if inner else None
    for name in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(address, f"is_{name}"):
            return f"a {name.replace('_', '-')} address"
    if address in _SHARED:
        return "a shared (CGNAT) address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if any(address in net for net in _EXTRA_REFUSED) or not address.is_global:
        return "a non-public address"
    return None


@dataclass(frozen=True)
class ArtifactUrlPolicy:
    """The rules above for one client: its API origin and the operator's allow-list."""

    api_origin: Origin
    allowed_hosts: tuple[tuple[str, int | None], ...] = ()

    @classmethod
    def for_api(cls, base_url: str, allowed_hosts: Sequence[str] = ()) -> ArtifactUrlPolicy:
        parsed = tuple(split_host_port(h) for h in allowed_hosts)
        return cls(origin_of(httpx.URL(base_url)), parsed)

    def _allowed(self, origin: Origin) -> bool:
        host = origin.host
        return any(h == host and (p is None or p == origin.port) for h, p in self.allowed_hosts)

    def screen(self, url: str | httpx.URL, *, hop: int = 0) -> Screened:
        """Apply the scheme and origin rules (and check an address literal); no DNS here."""
        where = "artifact URL" if hop == 0 else f"redirect {hop}"
        try:
            parsed = httpx.URL(url)
            origin = origin_of(parsed)
        except (httpx.InvalidURL, ValueError, TypeError):  # UnicodeError is a ValueError
            raise DownloadRefusedError(f"download refused: {where} is not a valid URL") from None
        scheme = origin.scheme
        if scheme not in _DEFAULT_PORTS or not origin.host:
            raise DownloadRefusedError(
                f"download refused: {where} is not an http(s) URL with a host"
            )
        trusted = origin == self.api_origin or self._allowed(origin)
        if trusted:
            return Screened(parsed, origin, trusted=True)
        if scheme != "https":
            raise DownloadRefusedError(
                f"download refused: {where} {origin} is not https and not the API's origin "
                f"{self.api_origin} (SPINE_ARTIFACT_ALLOWED_HOSTS can allow a host)"
            )
        literal = _literal(origin.host)
        if literal is not None:
            self._check(origin, [literal], where)
        return Screened(parsed, origin, trusted=False, literal=literal)

    def pin(self, screened: Screened, addresses: Iterable[str], *, hop: int = 0) -> IPAddress:
        """Check every address a name resolved to; the first one is where to connect.

        All must be public, not just the one used: a name that also resolves to a private
        address is refused whichever the resolver would have picked.
        """
        where = "artifact URL" if hop == 0 else f"redirect {hop}"
        checked = [a for a in (_literal(s) for s in addresses) if a is not None]
        if not checked:
            raise DownloadRefusedError(
                f"download refused: {where} host {screened.origin.host} resolved to no address"
            )
        self._check(screened.origin, checked, where)
        return checked[0]

    def _check(self, origin: Origin, addresses: Sequence[IPAddress], where: str) -> None:
        for address in addresses:
            problem = address_problem(address)
            if problem is not None:
                via = "is" if origin.host == str(address) else f"resolves to {address},"
                raise DownloadRefusedError(
                    f"download refused: {where} host {origin.host} {via} {problem} "
                    "(SPINE_ARTIFACT_ALLOWED_HOSTS can allow a host)"
                )


def _literal(host: str) -> IPAddress | None:
    """The address a host string names, if it is one (scope ids dropped)."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
