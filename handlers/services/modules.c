/* The application's service modules (app.h, "service modules"), in start order: the services
 * with state of their own. A service without any (Health, Reflection, Debug) needs no entry. */
#include "accounts.h"
#include "app.h"
#include "comments.h"
#include "groupchat.h"
#include "groups.h"
#include "media.h"
#include "messages.h"
#include "party.h"
#include "plays.h"
#include "teaching.h"
#include "threads.h"
#include "uploads.h"
#include "profchats.h"
#include "signalling.h"
#include "users.h"
#include "videochats.h"
#include "videos.h"

const app_module *const app_modules[] = {
    &accounts_module, /* Auth's and Users' rate limiters */
    &messages_module, /* the Send limiter */
    &comments_module, /* the comment limiter, comment events filled in */
    &teaching_module, /* the teaching request limiter */
    &users_module,    /* the Users/Search limiter */
    &groups_module,   /* the Join/Invite limiter */
    &groupchat_module, /* group message events filled in */
    &videochats_module, /* the chats' reminders (scheduler jobs) */
    &profchats_module,  /* the sessions' reminders (scheduler jobs) */
    &signalling_module, /* the calls' rooms (Signalling/Connect) */
    &party_module,    /* the live watch parties and their streams */
    &plays_module,    /* the per-user budget of play interactions */
    &threads_module,  /* the thread budgets, thread events filled in */
    &videos_module,   /* the media signing key, published for signed URLs (media_sign.h) */
    &media_module,    /* the processing workers (ffmpeg children) and their job queue */
    &uploads_module,  /* upload expiry (scheduler jobs), the sweeper of uploads' bytes */
};
const size_t app_modules_count = sizeof(app_modules) / sizeof(app_modules[0]);
