from busgate.cli import main

raise SystemExit(main())
