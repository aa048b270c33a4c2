"""Pure builders: (spec, names, settings) -> manifest dicts. No API calls, no kopf, no globals."""
