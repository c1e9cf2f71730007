//! Microsoft Graph JSON shapes shared by the client (`graph`) and the emulator (`emulator`).
//!
//! These are the wire types, spelled as Graph spells them (camelCase). Both sides use the same
//! structs so the emulator cannot drift from what the client parses. Optional properties stay
//! `Option` because Graph omits what was not `$select`ed and returns `null` for unset values;
//! `#[skip_serializing_none]` leaves an absent one out of what is sent, as Graph does.

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

/// A user as Graph returns it. Only the properties this tool reads are modelled; the emulator
/// keeps the same set as the tenant's source of truth.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    pub display_name: Option<String>,
    pub user_principal_name: Option<String>,
    pub mail: Option<String>,
    pub other_mails: Option<Vec<String>>,
    pub proxy_addresses: Option<Vec<String>>,
    pub account_enabled: Option<bool>,
    /// `Member` or `Guest`. Reported, never a reason to block (docs/usage.md).
    pub user_type: Option<String>,
    /// `PendingAcceptance` or `Accepted` once the user has been invited as B2B.
    pub external_user_state: Option<String>,
    pub external_user_state_change_date_time: Option<String>,
    /// `Invitation` for accounts created or converted through the invitation API.
    pub creation_type: Option<String>,
    pub on_premises_sync_enabled: Option<bool>,
    pub on_premises_user_principal_name: Option<String>,
    pub assigned_plans: Option<Vec<AssignedPlan>>,
    pub identities: Option<Vec<ObjectIdentity>>,
    /// Moves when the password is set (a synced user's when the on-premises change syncs):
    /// how `retire` and `track` see that an internal password was retired.
    pub last_password_change_date_time: Option<String>,
    /// Moves on `revokeSignInSessions`: tokens issued before it are refused.
    pub sign_in_sessions_valid_from_date_time: Option<String>,
    /// Set (beta) when the user was converted back to an internal member; Graph then refuses a
    /// new invitation with 412, so validation blocks the user `converted_back`.
    pub external_user_converted_on: Option<String>,
    /// A synced user's on-premises SID: how the AD scripts find the account without guessing.
    pub on_premises_security_identifier: Option<String>,
    pub on_premises_sam_account_name: Option<String>,
    /// Set by Graph when the user is created; the emulator's invited guests get theirs.
    pub created_date_time: Option<String>,
    /// Writable profile properties the tool never reads: held so that the emulator accepts
    /// an SDK's PATCH of them as Graph does, and answers them back.
    pub given_name: Option<String>,
    pub surname: Option<String>,
    pub job_title: Option<String>,
    pub department: Option<String>,
    pub company_name: Option<String>,
    pub business_phones: Option<Vec<String>>,
    pub mobile_phone: Option<String>,
    pub office_location: Option<String>,
    pub preferred_language: Option<String>,
    pub usage_location: Option<String>,
}

impl User {
    /// True when an enabled Exchange Online plan is assigned: such a user has a mailbox and
    /// `mail` cannot point outside the tenant.
    pub fn has_enabled_exchange_plan(&self) -> bool {
        self.assigned_plans.iter().flatten().any(|p| {
            p.service.eq_ignore_ascii_case("exchange")
                && p.capability_status.eq_ignore_ascii_case("Enabled")
        })
    }
}

/// The `$select` list that gives validation everything it needs in one read.
pub const VALIDATION_SELECT: &str = "id,displayName,userPrincipalName,mail,otherMails,\
proxyAddresses,accountEnabled,userType,externalUserState,externalUserStateChangeDateTime,\
creationType,onPremisesSyncEnabled,onPremisesUserPrincipalName,assignedPlans,identities,\
lastPasswordChangeDateTime,signInSessionsValidFromDateTime,onPremisesSecurityIdentifier,\
onPremisesSamAccountName";

/// `externalUserConvertedOn` is a beta property: v1.0 refuses it in `$select`, so the users
/// converted back are listed once per run through beta with this filter (Graph documents it as
/// filterable with `ge`).
pub const CONVERTED_BACK_FILTER: &str = "externalUserConvertedOn ge 1900-01-01T00:00:00Z";

#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignedPlan {
    pub assigned_date_time: Option<String>,
    pub capability_status: String,
    pub service: String,
    pub service_plan_id: Option<String>,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectIdentity {
    pub sign_in_type: Option<String>,
    pub issuer: Option<String>,
    pub issuer_assigned_id: Option<String>,
}

/// `GET /v1.0/domains` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Domain {
    pub id: String,
    #[serde(default)]
    pub is_verified: bool,
    #[serde(default)]
    pub is_default: bool,
    /// The `*.onmicrosoft.com` domain created with the tenant (exactly one per tenant).
    #[serde(default)]
    pub is_initial: bool,
}

/// A group as listed by the emulator's tenant file; Graph itself returns more.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    pub id: String,
    pub display_name: Option<String>,
}

/// One page of a Graph collection.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    #[serde(rename = "@odata.context")]
    pub context: Option<String>,
    #[serde(rename = "@odata.count")]
    pub count: Option<u64>,
    #[serde(rename = "@odata.nextLink")]
    pub next_link: Option<String>,
    pub value: Vec<T>,
}

/// One page of a delta query (`GET /v1.0/users/delta`): entries stay JSON because an entry
/// may carry only the properties that changed, and an absent property must not read as empty.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeltaPage {
    #[serde(rename = "@odata.nextLink")]
    pub next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    pub delta_link: Option<String>,
    #[serde(default)]
    pub value: Vec<serde_json::Value>,
}

/// `POST /v1.0/invitations` body. Unknown properties are refused by Graph (and the emulator),
/// so every field is modelled and absent ones are skipped.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InvitationRequest {
    pub invited_user_email_address: String,
    pub invite_redirect_url: String,
    pub send_invitation_message: Option<bool>,
    pub invited_user_display_name: Option<String>,
    pub invited_user_type: Option<String>,
    pub reset_redemption: Option<bool>,
    pub invited_user: Option<InvitedUserRef>,
    pub invited_user_message_info: Option<InvitedUserMessageInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvitedUserRef {
    pub id: String,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InvitedUserMessageInfo {
    pub message_language: Option<String>,
    pub cc_recipients: Option<Vec<Recipient>>,
    pub customized_message_body: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recipient {
    pub email_address: EmailAddress,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmailAddress {
    pub name: Option<String>,
    pub address: String,
}

/// `201 Created` answer of the invitation API.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invitation {
    pub id: String,
    #[serde(default)]
    pub invited_user_email_address: String,
    pub invited_user_display_name: Option<String>,
    pub invited_user_type: Option<String>,
    /// Credential-like link: stored in the database only, never logged or reported.
    pub invite_redeem_url: Option<String>,
    pub invite_redirect_url: Option<String>,
    pub send_invitation_message: Option<bool>,
    pub reset_redemption: Option<bool>,
    /// `PendingAcceptance`, `Completed`, `InProgress` or `Error`.
    #[serde(default)]
    pub status: String,
    pub invited_user: Option<InvitedUserRef>,
    pub invited_user_message_info: Option<InvitedUserMessageInfo>,
}

/// Graph's error body: `{"error":{"code","message","innerError":{…}}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(rename = "innerError")]
    pub inner_error: Option<InnerError>,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InnerError {
    pub code: Option<String>,
    #[serde(rename = "request-id")]
    pub request_id: Option<String>,
    #[serde(rename = "client-request-id")]
    pub client_request_id: Option<String>,
    pub date: Option<String>,
}

/// `POST /v1.0/$batch` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchRequest {
    pub requests: Vec<BatchRequestItem>,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchRequestItem {
    pub id: String,
    pub method: String,
    /// Relative to the version root, e.g. `/users/{id}`.
    pub url: String,
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    pub body: Option<serde_json::Value>,
    /// Ids of sub-requests that must succeed first; Graph answers 424 when one failed.
    #[serde(rename = "dependsOn")]
    pub depends_on: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchResponse {
    pub responses: Vec<BatchResponseItem>,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchResponseItem {
    pub id: String,
    pub status: u16,
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    pub body: Option<serde_json::Value>,
}

/// `200` answer of the beta `convertExternalToInternalMemberUser`. Graph's answer spells the
/// date `convertedToInternalUserDateTime`; the documentation's table spells it
/// `convertedToInternalDateTime`: both are read.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversionUserDetails {
    pub display_name: Option<String>,
    pub user_principal_name: Option<String>,
    #[serde(alias = "convertedToInternalDateTime")]
    pub converted_to_internal_user_date_time: Option<String>,
    pub mail: Option<String>,
}

/// Successful answer of the token endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenResponse {
    pub token_type: String,
    pub expires_in: u64,
    pub ext_expires_in: Option<u64>,
    pub access_token: String,
}

/// Error answer of the token endpoint (AADSTS style).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenError {
    pub error: String,
    pub error_description: String,
    #[serde(default)]
    pub error_codes: Vec<u64>,
    pub trace_id: Option<String>,
    pub correlation_id: Option<String>,
    pub timestamp: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invitation_request_refuses_unknown_properties() {
        let body =
            r#"{"invitedUserEmailAddress":"a@b.com","inviteRedirectUrl":"https://x","bogus":1}"#;
        assert!(serde_json::from_str::<InvitationRequest>(body).is_err());
    }

    #[test]
    fn invitation_request_omits_absent_fields() {
        let req = InvitationRequest {
            invited_user_email_address: "a@fabrikam.com".into(),
            invite_redirect_url: "https://myapplications.microsoft.com".into(),
            send_invitation_message: Some(false),
            invited_user: Some(InvitedUserRef { id: "u1".into() }),
            ..Default::default()
        };
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "invitedUserEmailAddress": "a@fabrikam.com",
                "inviteRedirectUrl": "https://myapplications.microsoft.com",
                "sendInvitationMessage": false,
                "invitedUser": {"id": "u1"}
            })
        );
    }

    #[test]
    fn conversion_date_is_read_in_both_spellings() {
        for key in [
            "convertedToInternalUserDateTime",
            "convertedToInternalDateTime",
        ] {
            let body = format!(
                r#"{{"userPrincipalName":"a@contoso.com","{key}":"2026-12-01T10:00:00Z"}}"#
            );
            let d: ConversionUserDetails = serde_json::from_str(&body).unwrap();
            assert_eq!(
                d.converted_to_internal_user_date_time.as_deref(),
                Some("2026-12-01T10:00:00Z"),
                "{key}"
            );
        }
    }

    #[test]
    fn exchange_plan_detection_needs_enabled_exchange() {
        let mut u = User {
            id: "1".into(),
            ..Default::default()
        };
        assert!(!u.has_enabled_exchange_plan());
        u.assigned_plans = Some(vec![AssignedPlan {
            capability_status: "Deleted".into(),
            service: "exchange".into(),
            ..Default::default()
        }]);
        assert!(!u.has_enabled_exchange_plan());
        u.assigned_plans.as_mut().unwrap()[0].capability_status = "Enabled".into();
        assert!(u.has_enabled_exchange_plan());
    }
}
