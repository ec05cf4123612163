#include "test_tables.h"

#include <stddef.h>

static int user_name_key(const void *row, store_key *k)
{
    store_key_str_fold(k, ((const tuser *)row)->name);
    return 1;
}

/* Sparse: users without an email have no entry, so two of them do not conflict. */
static int user_email_key(const void *row, store_key *k)
{
    const tuser *u = row;
    if (!u->email[0])
        return 0;
    store_key_str_fold(k, u->email);
    return 1;
}

static int user_created_key(const void *row, store_key *k)
{
    store_key_i64(k, ((const tuser *)row)->created_at);
    return 1;
}

static const store_index user_indexes[] = {
    [USERS_BY_NAME] = {"by_name", "name", STORE_UNIQUE, user_name_key},
    [USERS_BY_EMAIL] = {"by_email", "email", STORE_UNIQUE, user_email_key},
    [USERS_BY_CREATED] = {"by_created", "created_at", STORE_MULTI, user_created_key},
};

const store_table t_users = {
    .name = "users",
    .msg = &lagoon_test_v1_TUser_info,
    .row_size = sizeof(tuser),
    .id_offset = offsetof(tuser, id),
    .indexes = user_indexes,
    .nindexes = 3,
};

/* Videos of a user, newest first. */
static int video_owner_key(const void *row, store_key *k)
{
    const tvideo *v = row;
    store_key_u64(k, v->owner_id);
    store_key_i64_desc(k, v->created_at);
    return 1;
}

static const store_index video_indexes[] = {
    [VIDEOS_BY_OWNER] = {"by_owner", "owner_id", STORE_MULTI, video_owner_key},
};

static const store_fkey video_fkeys[] = {
    {"owner_id", offsetof(tvideo, owner_id), &t_users, &video_indexes[VIDEOS_BY_OWNER],
     STORE_CASCADE, 0},
};

const store_table t_videos = {
    .name = "videos",
    .msg = &lagoon_test_v1_TVideo_info,
    .row_size = sizeof(tvideo),
    .id_offset = offsetof(tvideo, id),
    .indexes = video_indexes,
    .nindexes = 1,
    .fkeys = video_fkeys,
    .nfkeys = 1,
};

static int comment_video_key(const void *row, store_key *k)
{
    store_key_u64(k, ((const tcomment *)row)->video_id);
    return 1;
}

static int comment_author_key(const void *row, store_key *k)
{
    store_key_u64(k, ((const tcomment *)row)->author_id);
    return 1;
}

static const store_index comment_indexes[] = {
    [COMMENTS_BY_VIDEO] = {"by_video", "video_id", STORE_MULTI, comment_video_key},
    [COMMENTS_BY_AUTHOR] = {"by_author", "author_id", STORE_MULTI, comment_author_key},
};

static const store_fkey comment_fkeys[] = {
    {"video_id", offsetof(tcomment, video_id), &t_videos, &comment_indexes[COMMENTS_BY_VIDEO],
     STORE_CASCADE, 0},
    {"author_id", offsetof(tcomment, author_id), &t_users, &comment_indexes[COMMENTS_BY_AUTHOR],
     STORE_RESTRICT, 0},
};

const store_table t_comments = {
    .name = "comments",
    .msg = &lagoon_test_v1_TComment_info,
    .row_size = sizeof(tcomment),
    .id_offset = offsetof(tcomment, id),
    .indexes = comment_indexes,
    .nindexes = 2,
    .fkeys = comment_fkeys,
    .nfkeys = 2,
};

/* A join table: a share is found from the video (unique per video and user) and from the
 * user. */
static int share_video_user_key(const void *row, store_key *k)
{
    const tshare *s = row;
    store_key_u64(k, s->video_id);
    store_key_u64(k, s->user_id);
    return 1;
}

static int share_user_key(const void *row, store_key *k)
{
    const tshare *s = row;
    store_key_u64(k, s->user_id);
    store_key_u64(k, s->video_id);
    return 1;
}

static const store_index share_indexes[] = {
    [SHARES_BY_VIDEO_USER] = {"by_video_user", "user_id", STORE_UNIQUE, share_video_user_key},
    [SHARES_BY_USER] = {"by_user", "user_id", STORE_MULTI, share_user_key},
};

static const store_fkey share_fkeys[] = {
    {"video_id", offsetof(tshare, video_id), &t_videos, &share_indexes[SHARES_BY_VIDEO_USER],
     STORE_CASCADE, 0},
    {"user_id", offsetof(tshare, user_id), &t_users, &share_indexes[SHARES_BY_USER],
     STORE_CASCADE, 0},
};

const store_table t_shares = {
    .name = "shares",
    .msg = &lagoon_test_v1_TShare_info,
    .row_size = sizeof(tshare),
    .id_offset = offsetof(tshare, id),
    .indexes = share_indexes,
    .nindexes = 2,
    .fkeys = share_fkeys,
    .nfkeys = 2,
};

static const store_table *const tables[] = {&t_users, &t_videos, &t_comments, &t_shares};

static const store_schema schema_v1 = {tables, 4, 1, NULL, NULL};
store_schema test_schema_v2 = {tables, 4, 2, NULL, NULL};

const store_schema *test_schema(void)
{
    return &schema_v1;
}
