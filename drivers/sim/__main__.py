"""``python -m drivers.sim``: run the firmware simulator."""

from drivers.sim.main import main

raise SystemExit(main())
