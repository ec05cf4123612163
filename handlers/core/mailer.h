/* mailer: delivers the outbox. Emails are written to the outbox table in the same transaction
 * as the change that causes them; this worker thread then delivers each as an RFC 5322 file in
 * a maildir (tmp/ -> new/, readable by any mail reader) and deletes the row. A failed delivery
 * is retried with a growing delay; the outbox survives restarts, and a message delivered just
 * before a crash is recognised by its file name and not delivered twice. */
#ifndef LAGOON_MAILER_H
#define LAGOON_MAILER_H

#include "app.h"

/* Creates maildir/{tmp,new,cur} and starts the worker. RPC_OK or RPC_ERR with err filled. */
int mailer_start(app *a, const char *maildir, mailer **out, rpc_error *err);
/* Delivers what is due, then stops the worker. NULL allowed. */
void mailer_stop(mailer *m);

#endif
