/* Users service: placeholder bodies while the feature is built. */
#include "lagoon_handlers.h"

int handle_Users_GetProfile(rpc_call *call, const lagoon_v1_GetProfileRequest *req, lagoon_v1_UserProfile *resp)
{
    (void)call;
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not implemented yet");
}

int handle_Users_UpdateProfile(rpc_call *call, const lagoon_v1_UpdateProfileRequest *req, lagoon_v1_UserProfile *resp)
{
    (void)call;
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not implemented yet");
}

int handle_Users_Get(rpc_call *call, const lagoon_v1_GetUserRequest *req, lagoon_v1_PublicUser *resp)
{
    (void)call;
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not implemented yet");
}

int handle_Users_ListTeachers(rpc_call *call, const lagoon_v1_ListUsersRequest *req, lagoon_v1_ListUsersResponse *resp)
{
    (void)call;
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not implemented yet");
}

int handle_Users_ListStudents(rpc_call *call, const lagoon_v1_ListUsersRequest *req, lagoon_v1_ListUsersResponse *resp)
{
    (void)call;
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not implemented yet");
}

int handle_Users_ChangePassword(rpc_call *call, const lagoon_v1_ChangePasswordRequest *req, lagoon_v1_UsersEmpty *resp)
{
    (void)call;
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not implemented yet");
}

int handle_Users_DeleteAccount(rpc_call *call, const lagoon_v1_DeleteAccountRequest *req, lagoon_v1_UsersEmpty *resp)
{
    (void)call;
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not implemented yet");
}

int handle_Users_SetRole(rpc_call *call, const lagoon_v1_SetRoleRequest *req, lagoon_v1_PublicUser *resp)
{
    (void)call;
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not implemented yet");
}

int handle_Users_SetActive(rpc_call *call, const lagoon_v1_SetActiveRequest *req, lagoon_v1_UserProfile *resp)
{
    (void)call;
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not implemented yet");
}
