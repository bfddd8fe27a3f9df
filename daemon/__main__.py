from credential_sidecar.cli import main

raise SystemExit(main())
