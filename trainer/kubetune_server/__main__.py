from kubetune_server.cli import main

raise SystemExit(main())
