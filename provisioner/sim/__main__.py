"""`python -m provisioner.sim`: serve the simulated Vast.ai (see app.main)."""

from provisioner.sim.app import main

raise SystemExit(main())
