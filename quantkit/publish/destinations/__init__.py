"""Where `quantkit push` sends artifacts. A new kind is one module plus a line in DESTINATIONS:
its URL scheme and the class."""

from __future__ import annotations

from quantkit.publish.destinations.base import Destination, PushError, PushOptions, PushResult

# scheme -> "module:Class", imported on use (the OCI client is not needed to push to a hub)
DESTINATIONS: dict[str, str] = {
    "hf": "quantkit.publish.destinations.huggingface:HuggingFaceHub",
    "oci": "quantkit.publish.destinations.oci:OCIRegistry",
}


def destination_for(target: str) -> Destination:
    """`oci://HOST/NAME:TAG`, `hf://ORG/NAME` or a bare hub repo id `ORG/NAME`."""
    import importlib

    scheme, sep, _ = target.partition("://")
    if not sep:
        scheme = "hf"
    if scheme not in DESTINATIONS:
        from quantkit.errors import QuantkitError

        raise QuantkitError(f"--to {target!r}: unknown destination '{scheme}://'; use one of "
                            + ", ".join(f"{s}://" for s in DESTINATIONS))
    module, cls = DESTINATIONS[scheme].split(":")
    return getattr(importlib.import_module(module), cls)(target)


__all__ = ["DESTINATIONS", "Destination", "PushError", "PushOptions", "PushResult", "destination_for"]
