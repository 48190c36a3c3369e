from pyqmail.pop3d.listener import main

raise SystemExit(main())
