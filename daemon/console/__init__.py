"""The web console: a separate process (``clever-cluster-console``) that shows the
cluster at a glance and carries out the everyday operator actions.

It talks to the local daemon only through the control socket, the way
``clevervm`` does, so a slow browser or a bug here can never stall or crash
the arbiter (DESIGN section 9). docs/console.md describes set-up and security.

Modules: ``settings`` (the [console] section), ``auth`` (password hash,
sessions, CSRF, login rate limit), ``daemonlink`` (async control client and
the status feed), ``view`` (status JSON to the page's view model),
``actions`` (the operator actions and their confirmations), ``http`` (a
small HTTP/1.1 server on h11), ``app`` (the routes), ``main`` (the command).
"""
