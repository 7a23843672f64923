//! `meridian.v1.MessageHandler`: what a proxy's RouteMessage reaches. The node answers
//! with the message's id, its own id and the payload, and says which attempt it saw (as
//! the `x-attempt` reply header and response header) so retry tests can count.

use std::sync::Arc;

use meridian_proto::v1 as pb;
use meridian_proto::v1::message_handler_server::MessageHandler;
use tonic::{Request, Response, Status};

use super::behaviour::NodeBehaviour;

/// Names the attempt the node saw, in the reply's headers and the response metadata.
pub const ATTEMPT_HEADER: &str = "x-attempt";

/// The MessageHandler service of one node.
pub struct HandlerService {
    behaviour: Arc<NodeBehaviour>,
}

impl HandlerService {
    pub fn new(behaviour: Arc<NodeBehaviour>) -> Self {
        HandlerService { behaviour }
    }
}

#[tonic::async_trait]
impl MessageHandler for HandlerService {
    async fn handle_message(
        &self,
        request: Request<pb::HandleMessageRequest>,
    ) -> Result<Response<pb::HandleMessageResponse>, Status> {
        self.behaviour.admit(0).await?;
        let pb::HandleMessageRequest {
            message, attempt, ..
        } = request.into_inner();
        let message = message.ok_or_else(|| Status::invalid_argument("message is required"))?;
        let attempt = attempt.to_string();
        let mut response = Response::new(pb::HandleMessageResponse {
            message_id: message.id,
            node_id: self.behaviour.node_id().to_owned(),
            payload: message.payload,
            headers: [(ATTEMPT_HEADER.to_owned(), attempt.clone())].into(),
        });
        let value = attempt.parse().expect("a number is valid metadata");
        response.metadata_mut().insert(ATTEMPT_HEADER, value);
        Ok(response)
    }
}
