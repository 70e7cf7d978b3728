"""faust-streaming agents for low-rate control streams (tables with changelogs, web views)."""
