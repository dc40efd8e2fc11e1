"""Authentication and authorisation: who a client is, and what it may do.

No HTTP here (the api layer reads headers and writes challenges):

- L{trow.auth.scopes}: the Docker token scope grammar (C{repository:<name>:pull,push});
- L{trow.auth.users}: the user stores (C{--user/--password}, C{--htpasswd}); bcrypt runs on a
  L{trow.workers.Worker}, never on the reactor thread;
- L{trow.auth.policy}: the C{auth.rules} grants on repository prefixes;
- L{trow.auth.tokens}: signed bearer tokens and their key in the data dir;
- L{trow.auth.service}: L{Authenticator}, the facade the api layer calls.
"""
