"""Pure functions, forward/backward pairs, no state: the math of every layer lives here."""
