//! Every way a request can be refused, with its documented status and stable
//! `code`. The public answer is deliberately coarse where precision would be
//! an oracle (all bad enrollment tokens look alike); the precise reason is
//! kept for the audit trail and events.

use std::fmt;

pub use oneprotect_contracts::contract::ProblemCode;

/// Why an enrollment token was not accepted. Public answer: always
/// 401 `enrollment_token_invalid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFailure {
    Malformed,
    Unknown,
    Expired,
    Revoked,
    Exhausted,
}

impl TokenFailure {
    /// The reason recorded in audit and in `agent.enrollment.failed`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Malformed | Self::Unknown => "token_unknown",
            Self::Expired => "token_expired",
            Self::Revoked => "token_revoked",
            Self::Exhausted => "token_exhausted",
        }
    }
}

/// Why a runtime token was not accepted. Public answer: 401 `runtime_token_invalid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeTokenFailure {
    Malformed,
    BadSignature,
    UnknownKey,
    Expired,
    Superseded,
}

impl RuntimeTokenFailure {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "runtime_token_malformed",
            Self::BadSignature => "runtime_token_bad_signature",
            Self::UnknownKey => "runtime_token_unknown_key",
            Self::Expired => "runtime_token_expired",
            Self::Superseded => "runtime_token_superseded",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    RequestInvalid(String),
    ParameterInvalid(String),
    CsrInvalid(String),
    NonceInvalid,
    Unauthenticated(&'static str),
    EnrollmentTokenInvalid(TokenFailure),
    RuntimeTokenInvalid(RuntimeTokenFailure),
    ClientCertificateInvalid,
    IdentityUnknown,
    Forbidden(&'static str),
    IdentityRevoked,
    IdentityStale,
    ActorMismatch,
    CollectorMismatch,
    ScopeForbidden,
    NotServiceAccount,
    NotFound,
    NonceReplayed,
    RateLimited { retry_after_seconds: u32 },
    RuntimeSecretUnavailable,
    CertificateAuthorityUnavailable,
    StoreUnavailable,
    Internal,
}

impl Rejection {
    pub fn status(&self) -> u16 {
        match self {
            Self::RequestInvalid(_)
            | Self::ParameterInvalid(_)
            | Self::CsrInvalid(_)
            | Self::NonceInvalid => 400,
            Self::Unauthenticated(_)
            | Self::EnrollmentTokenInvalid(_)
            | Self::RuntimeTokenInvalid(_)
            | Self::ClientCertificateInvalid
            | Self::IdentityUnknown => 401,
            Self::Forbidden(_)
            | Self::IdentityRevoked
            | Self::IdentityStale
            | Self::ActorMismatch
            | Self::CollectorMismatch
            | Self::ScopeForbidden
            | Self::NotServiceAccount => 403,
            Self::NotFound => 404,
            Self::NonceReplayed => 409,
            Self::RateLimited { .. } => 429,
            Self::Internal => 500,
            Self::RuntimeSecretUnavailable
            | Self::CertificateAuthorityUnavailable
            | Self::StoreUnavailable => 503,
        }
    }

    /// The stable machine code clients branch on.
    pub fn code(&self) -> ProblemCode {
        match self {
            Self::RequestInvalid(_) => ProblemCode::RequestInvalid,
            Self::ParameterInvalid(_) => ProblemCode::ParameterInvalid,
            Self::CsrInvalid(_) => ProblemCode::CsrInvalid,
            Self::NonceInvalid => ProblemCode::NonceInvalid,
            Self::Unauthenticated(_) => ProblemCode::Unauthenticated,
            Self::EnrollmentTokenInvalid(_) => ProblemCode::EnrollmentTokenInvalid,
            Self::RuntimeTokenInvalid(_) => ProblemCode::RuntimeTokenInvalid,
            Self::ClientCertificateInvalid => ProblemCode::ClientCertificateInvalid,
            Self::IdentityUnknown => ProblemCode::IdentityUnknown,
            Self::Forbidden(_) => ProblemCode::Forbidden,
            Self::IdentityRevoked => ProblemCode::IdentityRevoked,
            Self::IdentityStale => ProblemCode::IdentityStale,
            Self::ActorMismatch => ProblemCode::ActorMismatch,
            Self::CollectorMismatch => ProblemCode::CollectorMismatch,
            Self::ScopeForbidden => ProblemCode::ScopeForbidden,
            Self::NotServiceAccount => ProblemCode::NotServiceAccount,
            Self::NotFound => ProblemCode::NotFound,
            Self::NonceReplayed => ProblemCode::NonceReplayed,
            Self::RateLimited { .. } => ProblemCode::RateLimited,
            Self::RuntimeSecretUnavailable => ProblemCode::RuntimeSecretUnavailable,
            Self::CertificateAuthorityUnavailable => ProblemCode::CertificateAuthorityUnavailable,
            Self::StoreUnavailable => ProblemCode::StoreUnavailable,
            Self::Internal => ProblemCode::InternalError,
        }
    }

    /// The precise reason for the audit trail (may be finer than `code`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::EnrollmentTokenInvalid(f) => f.reason(),
            Self::RuntimeTokenInvalid(f) => f.reason(),
            other => other.code().as_str(),
        }
    }

    pub fn title(&self) -> &'static str {
        match self {
            Self::RequestInvalid(_) => "Invalid request body",
            Self::ParameterInvalid(_) => "Invalid parameter",
            Self::CsrInvalid(_) => "Certificate signing request rejected",
            Self::NonceInvalid => "Invalid nonce",
            Self::Unauthenticated(_) => "Authentication required",
            Self::EnrollmentTokenInvalid(_) => "Enrollment token invalid",
            Self::RuntimeTokenInvalid(_) => "Runtime token invalid",
            Self::ClientCertificateInvalid => "Client certificate invalid",
            Self::IdentityUnknown => "Agent identity unknown",
            Self::Forbidden(_) => "Forbidden",
            Self::IdentityRevoked => "Agent identity revoked",
            Self::IdentityStale => "Agent identity stale",
            Self::ActorMismatch => "Caller does not match the agent",
            Self::CollectorMismatch => "Caller does not match the collector",
            Self::ScopeForbidden => "Token scope does not allow this operation",
            Self::NotServiceAccount => "Caller is not an agent service account",
            Self::NotFound => "Not found",
            Self::NonceReplayed => "Nonce already used",
            Self::RateLimited { .. } => "Too many failed attempts",
            Self::RuntimeSecretUnavailable => "Runtime token secret unavailable",
            Self::CertificateAuthorityUnavailable => "Certificate authority unavailable",
            Self::StoreUnavailable => "Store unavailable",
            Self::Internal => "Internal error",
        }
    }

    /// Human detail. Never contains a secret: only fixed text or details
    /// produced by our own validators.
    pub fn detail(&self) -> Option<String> {
        Some(match self {
            Self::RequestInvalid(d) | Self::ParameterInvalid(d) | Self::CsrInvalid(d) => d.clone(),
            Self::NonceInvalid => {
                "the nonce must be 22 to 128 base64url characters (at least 128 random bits)".into()
            }
            Self::Unauthenticated(d) | Self::Forbidden(d) => (*d).into(),
            Self::EnrollmentTokenInvalid(_) => {
                "the enrollment token is not valid; ask your administrator for a new one".into()
            }
            Self::RuntimeTokenInvalid(_) => "the runtime token is not valid; rotate it or re-enroll".into(),
            Self::ClientCertificateInvalid => {
                "the client certificate is not this platform's current certificate for an agent; rotate it or re-enroll"
                    .into()
            }
            Self::IdentityUnknown => "no such agent identity; the agent must enroll again".into(),
            Self::IdentityRevoked => "this agent identity was revoked".into(),
            Self::IdentityStale => "this agent identity went stale; it must enroll again".into(),
            Self::ActorMismatch => "the token was issued to another agent".into(),
            Self::CollectorMismatch => "the token is bound to another collector".into(),
            Self::ScopeForbidden => "the token's scope does not cover this operation".into(),
            Self::NotServiceAccount => "only an agent runtime token may call this operation".into(),
            Self::NotFound => "no such resource".into(),
            Self::NonceReplayed => "this nonce was already used; generate a fresh one per attempt".into(),
            Self::RateLimited { retry_after_seconds } => format!("retry after {retry_after_seconds} seconds"),
            Self::RuntimeSecretUnavailable => {
                "the platform cannot issue or verify runtime tokens right now".into()
            }
            Self::CertificateAuthorityUnavailable => {
                "the platform cannot issue certificates right now".into()
            }
            Self::StoreUnavailable => "the platform store is unavailable".into(),
            Self::Internal => return None,
        })
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.reason())
    }
}

impl std::error::Error for Rejection {}
