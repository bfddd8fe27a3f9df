from credential_sidecar.devtools.emulator.cli import main

raise SystemExit(main())
