"""Phone calls: each provider is a module here and one entry below (see provider.py)."""

from __future__ import annotations

from pipelines.serve.telephony import exotel, plivo, telnyx, twilio
from pipelines.serve.telephony.provider import PhoneProvider

PROVIDERS: dict[str, PhoneProvider] = {
    module.PROVIDER.name: module.PROVIDER for module in (twilio, telnyx, plivo, exotel)
}


def check_phone_providers(names: list[str]) -> None:
    """Refuses ``server.phone_providers`` naming a provider that is not registered."""
    from agent.config import ConfigError

    unknown = sorted(set(names) - set(PROVIDERS))
    if unknown:
        raise ConfigError(
            f"server.phone_providers: unknown {', '.join(unknown)} (known: {', '.join(PROVIDERS)})"
        )
